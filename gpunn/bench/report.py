"""The results of ``gpunn bench``: their JSON Schema, the speed-ups, and the table, Markdown and
chart made of them."""

from __future__ import annotations

import statistics
from typing import Any

from ..backends.blas import describe
from ..plot import figure, save_figure
from .workloads import STEP_GEMMS

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
                "date": {"type": "string", "description": "the day of the run, YYYY-MM-DD"},
                "blas_warning": {"type": ["string", "null"],
                                 "description": "set when the environment forces OpenBLAS's "
                                                "kernel (OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE)"},
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
                             "step_ms_q1", "step_ms_q3", "repeats", "samples_per_s", "tflops",
                             "ceiling_fraction", "final_loss"],
                "properties": {
                    "workload": {"type": "string"},
                    "impl": {"type": "string",
                             "description": "gpunn-numpy, gpunn-cupy, gpunn-*-streamed (data "
                                            "in host memory, sent a batch at a time), "
                                            "gpunn-cupy-streamed-unthreaded (upload_thread "
                                            "off: each batch read on the calling thread), "
                                            "gpunn-cupy-separate "
                                            "(no cuBLASLt epilogues), gpunn-cupy-untuned "
                                            "(tune_gemms off: cuBLAS chooses each GEMM's "
                                            "algorithm), gpunn-cupy-gemms (narrow_kernels "
                                            "off: the output layer in GEMMs too), "
                                            "gpunn-cupy-overlap (overlap_weight_grads "
                                            "on: weight gradients on a second stream), "
                                            "gpunn-cupy-one-kernel "
                                            "(the one-block trainer), gpunn-numpy-one-kernel "
                                            "(its CPU sibling, compiled by numba), pytorch, "
                                            "pytorch-graph, jax, numpy-book; step-gemms: the "
                                            "step's GEMMs alone, a floor (no final_loss)"},
                    "backend": {"type": "string", "description": "numpy, cupy, torch, jax"},
                    "precision": {"enum": ["fp32", "tf32", "bf16"]},
                    "device": {"enum": ["cpu", "gpu"]},
                    "step_ms": {"type": "number",
                                "description": "median over repeats; for the book workload, the whole run"},
                    "step_ms_q1": {"type": "number", "description": "first quartile over repeats"},
                    "step_ms_q3": {"type": "number", "description": "third quartile over repeats"},
                    "repeats": {"type": "integer", "description": "timed repeats (1 for book)"},
                    "samples_per_s": {"type": "number"},
                    "tflops": {"type": ["number", "null"]},
                    "ceiling_fraction": {"type": ["number", "null"]},
                    "final_loss": {"type": ["number", "null"],
                                   "description": "loss after the same few steps, before timing"},
                    "ranks": {"type": "integer",
                              "description": "data-parallel rows: MPI ranks sharing each batch"},
                    "scaling_efficiency": {"type": "number",
                                           "description": "data-parallel rows: one rank's step "
                                                          "time over ranks x this one's"},
                    "speedup_vs": {"type": "object", "additionalProperties": {"type": "number"},
                                   "description": "gpunn rows: the peer's step time over this one"},
                    "default": {"type": "boolean",
                                "description": "gpunn rows: whether this is the path gpunn "
                                               "takes here unless told otherwise (the "
                                               "one-kernel trainer's row where it ran, else "
                                               "gpunn-<backend>)"},
                    "within_noise": {"type": "array", "items": {"type": "string"},
                                     "description": "gpunn rows: the peers whose interquartile "
                                                    "range overlaps this one's: that ratio does "
                                                    "not rank the two"},
                },
            },
        },
        "skipped": {"type": "array", "items": {"type": "object", "required": ["impl", "reason"]}},
        "failed": {"type": "array", "items": {"type": "object",
                                              "required": ["impl", "workload", "error"]}},
        "op_profiles": {
            "type": "array",
            "description": "gpunn bench --ops: each backend's planned path on each workload "
                           "and precision, run eagerly with every backend call timed; and on "
                           "the book workload, the one-kernel trainer's share of fit's time "
                           "per epoch (step_ms: per epoch; steps: epochs)",
            "items": {
                "type": "object",
                "required": ["workload", "impl", "device", "precision", "path", "step_ms",
                             "steps", "ops"],
                "properties": {
                    "workload": {"type": "string"},
                    "impl": {"type": "string"},
                    "device": {"enum": ["cpu", "gpu"]},
                    "precision": {"enum": ["fp32", "tf32", "bf16"]},
                    "path": {"enum": ["eager", "planned", "one-kernel"],
                             "description": "the path the step takes (training/steps.py)"},
                    "step_ms": {"type": "number",
                                "description": "mean eager step, timed (book: fit's time "
                                               "per epoch)"},
                    "steps": {"type": "integer"},
                    "ops": {"type": "array", "items": {
                        "type": "object", "required": ["op", "calls", "ms", "share"],
                        "properties": {
                            "op": {"type": "string",
                                   "description": "a backend method, or '(between ops)'"},
                            "calls": {"type": "number", "description": "per step"},
                            "ms": {"type": "number",
                                   "description": "per step, less the op's inner calls"},
                            "share": {"type": "number", "description": "of step_ms"},
                        }}},
                },
            },
        },
    },
}


def peer_backend(impl: str) -> str:
    return {"pytorch": "torch", "pytorch-graph": "torch", "jax": "jax"}.get(impl, "numpy")


def quartiles(times: list[float]) -> tuple[float, float]:
    """The first and third quartiles of the repeats (both the one value when there is one):
    the middle half of the runs, which one slow outlier does not stretch as max - min does."""
    if len(times) < 2:
        return times[0], times[0]
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, q3


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """On gpunn rows: each peer's time over gpunn's (above 1: gpunn is faster), and the peers
    whose middle half of repeats overlaps gpunn's (a ratio that does not rank the two)."""
    for row in rows:
        if row["impl"].startswith("gpunn-"):
            peers = [o for o in rows if not o["impl"].startswith("gpunn-") and o["impl"] != STEP_GEMMS]
            row["speedup_vs"] = {o["impl"]: o["step_ms"] / row["step_ms"] for o in peers}
            row["within_noise"] = [o["impl"] for o in peers if overlap(row, o)]


def mark_defaults(rows: list[dict[str, Any]]) -> None:
    """On gpunn rows: ``default``, whether the row times the path a model takes here unless told
    otherwise. That is the one-kernel trainer's row where it ran (it is on by default wherever it
    can take the network), else the backend's steps (gpunn-<backend>); the other rows time
    options switched, or data streamed from host memory."""
    ran = {row["impl"] for row in rows}
    for row in rows:
        if row["impl"].startswith("gpunn-"):
            trainer = f"gpunn-{row['backend']}-one-kernel"
            row["default"] = row["impl"] == (trainer if trainer in ran else f"gpunn-{row['backend']}")


def default_text(row: dict[str, Any]) -> str:
    return "  (gpunn's default here)" if row.get("default") else ""


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether the interquartile ranges of two measured rows overlap (single runs never do)."""
    if a.get("repeats", 1) < 2 or b.get("repeats", 1) < 2:
        return False
    return a["step_ms_q1"] <= b["step_ms_q3"] and b["step_ms_q1"] <= a["step_ms_q3"]


def ratio_text(row: dict[str, Any], peer: str, between: str = " ") -> str:
    """``1.23x pytorch``; ``~1.02x jax`` when the two are within each other's noise."""
    mark = "~" if peer in row.get("within_noise", []) else ""
    return f"{mark}{row['speedup_vs'][peer]:.2f}x{between}{peer}"


def speedup_text(row: dict[str, Any]) -> str:
    if not row.get("speedup_vs"):
        return ""
    return "  " + ", ".join(ratio_text(row, k) for k in row["speedup_vs"])


def noise_note(doc: dict[str, Any]) -> str:
    """One line on how many speed-ups the repeats rank, and what to do about the others."""
    pairs = [(r, k) for r in doc["results"] for k in r.get("speedup_vs", {})]
    noisy = sum(1 for r, k in pairs if k in r.get("within_noise", []))
    if not pairs:
        return "no peer ran, so there are no speed-ups"
    if not noisy:
        return f"all {len(pairs)} speed-ups are outside run-to-run noise"
    return (f"{noisy} of {len(pairs)} speed-ups (marked ~) are within run-to-run noise: the middle "
            f"halves of the two contenders' repeats overlap, so those ratios do not rank them; "
            f"rerun with more --repeats (and without --quick) on a quiet machine")


def row_text(row: dict[str, Any]) -> str:
    text = (f"{row['workload']:7s} {row['device']} {row['precision']} {row['impl']:19s} "
            f"{row['step_ms']:10.4f} ms (IQR {row['step_ms_q1']:.4f}-{row['step_ms_q3']:.4f})  "
            f"{row['samples_per_s']:12.0f} samples/s")
    if row.get("ceiling_fraction"):
        text += f"  {100 * row['ceiling_fraction']:5.1f}% of GEMM ceiling"
    return text + speedup_text(row) + default_text(row)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ""
    # NumPy's GEMMs are gpunn's on the CPU: which BLAS and kernel ran them belongs with the figures.
    blas = [b for b in m.get("blas") or [] if b.get("numpy")] or m.get("blas")
    blas_used = f"; BLAS {describe(blas)}" if blas else ""
    lines = [f"Machine: {m['cpu']} ({m['cpu_cores']} cores){gpu}{blas_used}"
             + f"; versions {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.", "",
             "GEMM ceiling (TFLOP/s): " + ", ".join(f"{k} {v:.3f}" for k, v in m["gemm_ceiling"].items()),
             "", "| workload | device | precision | impl | step (ms) | IQR (ms) | samples/s "
                 "| % of GEMM ceiling | gpunn speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        frac = f"{100 * r['ceiling_fraction']:.1f}" if r.get("ceiling_fraction") else ""
        iqr = f"{r['step_ms_q1']:.4f}-{r['step_ms_q3']:.4f}" if r.get("repeats", 1) > 1 else ""
        speed = ", ".join(ratio_text(r, k, " vs ") for k in r.get("speedup_vs", {}))
        impl = f"{r['impl']} (default)" if r.get("default") else r["impl"]
        lines.append(f"| {r['workload']} | {r['device']} | {r['precision']} | {impl} | "
                     f"{r['step_ms']:.4f} | {iqr} | {r['samples_per_s']:.0f} | {frac} | {speed} |")
    lines += ["", noise_note(doc) + "."]
    if m.get("blas_warning"):
        lines += ["", f"Warning: {m['blas_warning']}."]
    for s in doc["skipped"]:
        lines.append(f"\nSkipped: {s['impl']} ({s.get('workload', '')}): {s['reason']}")
    for f in doc.get("failed", []):
        lines.append(f"\nFailed: {f['impl']} ({f['workload']}, {f.get('precision', '')}): "
                     f"{f['error']}")
    for profile in doc.get("op_profiles", []):
        lines += ["", f"Op profile: {op_profile_title(profile)}", "",
                  "| op | calls per step | ms per step | share |", "|---|---|---|---|"]
        lines += [f"| {r['op']} | {calls_text(r['calls'])} | {r['ms']:.4f} | {100 * r['share']:.1f}% |"
                  for r in profile["ops"]]
    return "\n".join(lines) + "\n"


def op_profile_title(profile: dict[str, Any]) -> str:
    if profile["workload"] == "book":  # book_profile: fit's epochs, the trainer's share
        return (f"{profile['impl']} on the book's run ({profile['device']}, "
                f"{profile['precision']}, {profile['steps']} epochs in fit): "
                f"{profile['step_ms']:.4f} ms an epoch")
    return (f"{profile['impl']} on {profile['workload']} ({profile['device']}, "
            f"{profile['precision']}, {profile['path']} path run eagerly): "
            f"{profile['step_ms']:.4f} ms a step")


def calls_text(calls: float) -> str:
    """Calls per step: a count, or "1/n" for one call every n steps (the one-kernel trainer's
    launch, per epoch of the book's run)."""
    if 0 < calls < 1 and abs(1 / calls - round(1 / calls)) < 1e-6:
        return f"1/{round(1 / calls)}"
    return f"{calls:g}"


def op_profile_text(profile: dict[str, Any]) -> str:
    """An op profile for the terminal: the title, then the ops taking 1% or more."""
    rows = [f"    {r['op']:28s} {calls_text(r['calls']):>6}x {r['ms']:10.4f} ms "
            f"{100 * r['share']:5.1f}%" for r in profile["ops"] if r["share"] >= 0.01]
    return "\n".join([f"ops     {op_profile_title(profile)}", *rows])


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
