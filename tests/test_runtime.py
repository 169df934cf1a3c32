"""How many clients TFF trains at once by default."""
from __future__ import annotations

import pytest

from fedlm import runtime


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


def test_last_level_cache_is_read_or_unknown():
    size = runtime.last_level_cache_bytes()
    assert size is None or size >= 2**16
