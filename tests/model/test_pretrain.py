"""The pretrained model: keyed by what made it (not the run's seed), made once for processes that need it at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedlm.model import pretrain
from tests.conftest import ROOT, TINY, compose_config, read_until, start_fedlm


def _path(overrides: list[str], cache_dir: str = "/cache") -> str:
    cfg = compose_config([*TINY, *overrides])
    return pretrain.cache_path(cfg.model, cfg.pretrain, cfg.data.proxy_genres, cache_dir)


def test_runs_of_every_seed_share_one_pretrained_model_and_pretrain_seed_makes_another():
    assert _path(["seed=0"]) == _path(["seed=7"])
    assert _path(["pretrain.seed=1"]) != _path([])
    assert _path(["pretrain.log_every=1"]) == _path(["pretrain.log_every=3"])  # a progress cadence, not the model
    assert _path(["pretrain.steps=5"]) != _path([])


def test_a_corpus_file_is_keyed_by_its_content_not_its_time(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be: " * 20)
    before = _path([f"pretrain.corpus={corpus}"])
    stat = corpus.stat()
    corpus.write_text("All the world's a stage " * 20)
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # edited, but the same time (a copy, a checkout)
    assert _path([f"pretrain.corpus={corpus}"]) != before


@pytest.mark.e2e
def test_a_process_needing_a_model_being_pretrained_waits_and_reads_it(tmp_path):
    """As a sweep's parallel jobs (joblib) at their start: the second waits for the one pretraining, then reads its
    model. The test is the first process here (holding the lock, then writing the model), so nothing depends on
    which process starts first."""
    from fedlm.utils import waiting_lock

    args = [*TINY, "pretrain.steps=4"]
    made = (
        subprocess.run(
            [sys.executable, "-m", "fedlm.pretrain", *args, f"cache_dir={tmp_path / 'made'}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    path = Path(_path(args, str(tmp_path / "cache")))
    path.parent.mkdir(parents=True)
    with waiting_lock(f"{path}.lock", "unexpected: the lock is free"):
        proc = start_fedlm([*args, f"cache_dir={tmp_path / 'cache'}"], tmp_path, module="fedlm.pretrain")
        out = read_until(proc, "waiting for another fedlm process pretraining")
        assert str(path) in out, out
        shutil.copy(made, path)  # "the other process" finishes (an atomic rename, as fedlm's)
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + rest
    assert f"using cached pretrained model {path}" in rest and "pretraining tiny" not in out + rest, out + rest
    assert rest.strip().splitlines()[-1] == str(path)
