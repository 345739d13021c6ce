"""The results of ``gpunn bench``: their JSON Schema, the speed-ups, and the table, Markdown and
chart made of them."""

from __future__ import annotations

from typing import Any

from ..plot import figure, save_figure

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "gpunn bench results",
    "type": "object",
    "required": ["machine", "results", "skipped"],
    "properties": {
        "machine": {
            "type": "object",
            "required": ["cpu", "cpu_cores", "gpu", "python", "versions", "blas", "gemm_ceiling"],
            "properties": {
                "cpu": {"type": "string"},
                "cpu_cores": {"type": "integer"},
                "gpu": {"type": ["string", "null"]},
                "python": {"type": "string"},
                "versions": {"type": "object", "additionalProperties": {"type": "string"}},
                "blas": {"type": "array", "items": {"type": "object"}},
                "gemm_ceiling": {
                    "type": "object",
                    "description": "TFLOP/s of a large float32 GEMM per device and precision",
                    "additionalProperties": {"type": "number"},
                },
            },
        },
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["workload", "impl", "backend", "precision", "device", "step_ms",
                             "step_ms_spread", "samples_per_s", "tflops", "ceiling_fraction",
                             "final_loss"],
                "properties": {
                    "workload": {"type": "string"},
                    "impl": {"type": "string",
                             "description": "gpunn-numpy, gpunn-cupy, gpunn-cupy-separate "
                                            "(no cuBLASLt epilogues), gpunn-cupy-one-kernel "
                                            "(the one-block trainer), pytorch, "
                                            "pytorch-graph, jax, numpy-book"},
                    "backend": {"type": "string", "description": "numpy, cupy, torch, jax"},
                    "precision": {"enum": ["fp32", "tf32"]},
                    "device": {"enum": ["cpu", "gpu"]},
                    "step_ms": {"type": "number",
                                "description": "median over repeats; for the book workload, the whole run"},
                    "step_ms_spread": {"type": "number", "description": "max - min over repeats"},
                    "samples_per_s": {"type": "number"},
                    "tflops": {"type": ["number", "null"]},
                    "ceiling_fraction": {"type": ["number", "null"]},
                    "final_loss": {"type": ["number", "null"],
                                   "description": "loss after the same few steps, before timing"},
                    "speedup_vs": {"type": "object", "additionalProperties": {"type": "number"},
                                   "description": "gpunn rows: the peer's step time over this one"},
                },
            },
        },
        "skipped": {"type": "array", "items": {"type": "object", "required": ["impl", "reason"]}},
    },
}


def peer_backend(impl: str) -> str:
    return {"pytorch": "torch", "pytorch-graph": "torch", "jax": "jax"}.get(impl, "numpy")


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """On gpunn rows: each peer's time over gpunn's (above 1: gpunn is faster)."""
    for row in rows:
        if row["impl"].startswith("gpunn-"):
            row["speedup_vs"] = {o["impl"]: o["step_ms"] / row["step_ms"] for o in rows
                                 if not o["impl"].startswith("gpunn-")}


def speedup_text(row: dict[str, Any]) -> str:
    if not row.get("speedup_vs"):
        return ""
    return "  " + ", ".join(f"{v:.2f}x {k}" for k, v in row["speedup_vs"].items())


def row_text(row: dict[str, Any]) -> str:
    text = (f"{row['workload']:7s} {row['device']} {row['precision']} {row['impl']:19s} "
            f"{row['step_ms']:10.4f} ms ±{row['step_ms_spread']:.4f}  "
            f"{row['samples_per_s']:12.0f} samples/s")
    if row.get("ceiling_fraction"):
        text += f"  {100 * row['ceiling_fraction']:5.1f}% of GEMM ceiling"
    return text + speedup_text(row)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ""
    lines = [f"Machine: {m['cpu']} ({m['cpu_cores']} cores){gpu}"
             + f"; versions {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.", "",
             "GEMM ceiling (TFLOP/s): " + ", ".join(f"{k} {v:.3f}" for k, v in m["gemm_ceiling"].items()),
             "", "| workload | device | precision | impl | step (ms) | samples/s | % of GEMM ceiling "
                 "| gpunn speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        frac = f"{100 * r['ceiling_fraction']:.1f}" if r.get("ceiling_fraction") else ""
        speed = ", ".join(f"{v:.2f}x vs {k}" for k, v in r.get("speedup_vs", {}).items())
        lines.append(f"| {r['workload']} | {r['device']} | {r['precision']} | {r['impl']} | "
                     f"{r['step_ms']:.4f} | {r['samples_per_s']:.0f} | {frac} | {speed} |")
    for s in doc["skipped"]:
        lines.append(f"\nSkipped: {s['impl']} ({s.get('workload', '')}): {s['reason']}")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: str) -> None:
    """gpunn's speed-up over each peer, per workload, on a linear scale with each bar labelled
    (a log scale of samples/s made a 2x gap look like 15x)."""
    rows = [r for r in doc["results"]
            if r["impl"] in ("gpunn-numpy", "gpunn-cupy") and r.get("speedup_vs")]
    peers = sorted({peer for r in rows for peer in r["speedup_vs"]})
    fig = figure(figsize=(max(6.0, 1.8 * len(rows)), 4.5))
    ax = fig.subplots()
    width = 0.8 / max(1, len(peers))
    for j, peer in enumerate(peers):
        xs = [i + j * width for i, r in enumerate(rows) if peer in r["speedup_vs"]]
        ys = [r["speedup_vs"][peer] for r in rows if peer in r["speedup_vs"]]
        ax.bar_label(ax.bar(xs, ys, width, label=f"vs {peer}"), fmt="%.2fx", fontsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(peers) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"{r['workload']}\n{r['device']} {r['precision']}" for r in rows])
    ax.set_ylabel("speed-up: peer's step time / gpunn's")
    ax.set_title("gpunn bench: above 1, gpunn is faster")
    if peers:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
