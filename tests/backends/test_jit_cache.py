"""Compiled CPU code kept between runs (gpunn/backends/jit_cache.py): the written-out trainer as a
module file in the cache folder, which numba caches beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from support.training import CPU_TRAINER

from gpunn.backends import denormals, jit, jit_cache

SOURCE = "def twice(x):\n    return 2 * x\n"


def test_a_source_is_written_once_and_imported_from_its_file(tmp_path, monkeypatch):
    monkeypatch.setenv(jit_cache.ENV, str(tmp_path))
    first = jit_cache.module("twice", SOURCE, salt="a")
    assert first.twice(21) == 42 and first.__name__ in sys.modules
    (path,) = (tmp_path / "jit").glob("twice_*.py")
    assert path.read_text() == SOURCE and first.__file__ == str(path)
    assert not list((tmp_path / "jit").glob(".*.tmp"))  # written through a temporary, renamed
    assert jit_cache.module("twice", SOURCE, salt="a") is first  # the same file, the same module
    other = jit_cache.module("twice", SOURCE, salt="b")  # say a helper it calls changed
    assert other is not first and len(list((tmp_path / "jit").glob("twice_*.py"))) == 2
    changed = jit_cache.module("twice", SOURCE.replace("2 *", "3 *"), salt="a")
    assert changed.twice(1) == 3


def test_a_file_that_does_not_hold_its_source_is_written_again(tmp_path, monkeypatch):
    monkeypatch.setenv(jit_cache.ENV, str(tmp_path))
    jit_cache.module("thrice", SOURCE.replace("2 *", "3 *"), salt="a")
    (path,) = (tmp_path / "jit").glob("thrice_*.py")
    path.write_text("def twice(x):\n    return 0\n")  # edited by hand, or a bad disk
    for name in [n for n in sys.modules if n.startswith("gpunn_jit_thrice_")]:
        monkeypatch.delitem(sys.modules, name)  # as in the next process
    assert jit_cache.module("thrice", SOURCE.replace("2 *", "3 *"), salt="a").twice(2) == 6
    assert path.read_text() == SOURCE.replace("2 *", "3 *")


def test_the_folder_is_the_environments_or_the_users_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(jit_cache.ENV, str(tmp_path / "mine"))
    assert jit_cache.folder() == tmp_path / "mine" / "jit"
    monkeypatch.delenv(jit_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jit_cache.folder() == tmp_path / "xdg" / "gpunn" / "jit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert jit_cache.folder() == tmp_path / "home" / ".cache" / "gpunn" / "jit"


def test_no_folder_or_one_that_cannot_be_written_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(jit_cache.ENV, "")
    assert jit_cache.folder() is None and jit_cache.module("twice", SOURCE, "a") is None
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(jit_cache.ENV, str(blocker))  # its "jit" folder cannot be made
    assert jit_cache.module("twice", SOURCE, "a") is None


RUN = textwrap.dedent("""
    import hashlib, json
    import gpunn as nn
    from gpunn.backends import jit
    X, y = nn.datasets.spiral_data(samples=50, classes=3, seed=0)
    nn.set_seed(0)
    model = nn.Sequential([nn.Dense(2, 16), nn.ReLU(), nn.Dense(16, 3)])
    model.compile(nn.SoftmaxCrossEntropy(), nn.Adam(lr=0.05), backend="numpy")
    model.backend.one_kernel_trainer = True
    model.fit(X, y, epochs=20, batch_size=None, verbose=0)
    stats = jit._trainers[(2, 3)].stats
    flush = jit.flush_registers()  # None: no cache folder, or no flushing on this machine
    flush_stats = None if flush is None else [
        sum(sum(getattr(f.stats, kind).values()) for f in flush)
        for kind in ("cache_hits", "cache_misses")]
    print(json.dumps({"hits": sum(stats.cache_hits.values()),
                      "misses": sum(stats.cache_misses.values()),
                      "flush": flush_stats,
                      "params": hashlib.sha256(b"".join(p.tobytes() for p in
                                                        model.get_params())).hexdigest()}))
""")


@CPU_TRAINER
def test_the_next_run_loads_the_trainer_numba_compiled_before_and_trains_the_same(tmp_path):
    """Two processes with one cache folder: the first compiles the book network's trainer and
    numba keeps it; the second loads it (a cache hit, nothing compiled) and trains to the same
    bits. With the cache off, a third compiles in memory, to the same bits again. So with the
    functions that read and write the register for flushing denormals, on x86-64."""
    def run(folder):
        env = {**os.environ, jit_cache.ENV: folder}
        done = subprocess.run([sys.executable, "-c", RUN], env=env, capture_output=True,
                              text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    first, second, uncached = run(str(tmp_path)), run(str(tmp_path)), run("")
    assert (first["hits"], first["misses"]) == (0, 1)
    assert (second["hits"], second["misses"]) == (1, 0)
    assert (uncached["hits"], uncached["misses"]) == (0, 1)
    assert first["params"] == second["params"] == uncached["params"]
    assert list((tmp_path / "jit" / "__pycache__").glob("columns_2x3_*.nbi"))
    flushing = denormals.why_not() is None
    assert (first["flush"], second["flush"], uncached["flush"]) == \
        (([0, 2], [2, 0], None) if flushing else (None, None, None))


def test_info_names_the_folder_the_compiled_trainers_are_kept_in(tmp_path, monkeypatch, capsys):
    from gpunn import cli

    monkeypatch.setattr(jit, "why_not", lambda: None)
    for setting, said in ((str(tmp_path), f"compiled trainers kept in {tmp_path / 'jit'}"),
                          ("", f"compiled trainers kept nowhere ({jit_cache.ENV} is empty)")):
        monkeypatch.setenv(jit_cache.ENV, setting)
        assert cli.main(["info"]) == 0
        assert said in capsys.readouterr().out.splitlines()
    monkeypatch.setattr(jit, "why_not", lambda: "needs numba (pretended missing)")
    assert cli.main(["info"]) == 0
    assert "compiled trainers" not in capsys.readouterr().out
