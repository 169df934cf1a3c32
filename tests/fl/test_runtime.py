"""How many clients TFF trains at once by default; what the startup line counts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedlm.fl import runtime

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("cache_mb, cores, units, want", [
    (32, 2, 256, 2),    # 3 MB of recurrent weights a client: one per core
    (32, 2, 1024, 1),   # 25 MB a client: two would not fit in the cache together
    (32, 8, 512, 5),    # 6 MB a client: as many as fit, below the core count
    (1, 4, 1024, 1),    # never fewer than one
    (None, 4, 1024, 4), # cache size unknown: one per core
])
def test_default_is_one_per_core_as_far_as_the_cache_holds(monkeypatch, cache_mb, cores, units, want):
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(runtime, "last_level_cache_bytes", lambda: cache_mb and cache_mb * 2**20)
    assert runtime.concurrent_clients(None, units) == want


def test_explicit_setting_wins_and_zero_means_no_limit():
    assert runtime.concurrent_clients(3, 1024) == 3
    assert runtime.concurrent_clients(0, 256) == -1


def test_last_level_cache_is_the_highest_levels_size(tmp_path):
    for index, (level, size) in enumerate([(1, "32K"), (2, "1024K"), (3, "32768K"), (1, "32K")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "level").write_text(f"{level}\n")
        (tmp_path / f"index{index}" / "size").write_text(f"{size}\n")
    assert runtime.last_level_cache_bytes(str(tmp_path)) == 32 * 2**20
    assert runtime.last_level_cache_bytes(str(tmp_path / "missing")) is None  # no sysfs: unknown


def test_startup_counts_the_process_start_once_then_each_job_from_its_own_start():
    """A multirun's later jobs share the process: their startup line must not include the earlier jobs."""
    code = ("from fedlm.fl import runtime; first, later = runtime.Stopwatch(), runtime.Stopwatch(); later.lap('data'); "
            "print(sorted(first.laps), sorted(later.laps))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "['python + hydra'] ['data']"
