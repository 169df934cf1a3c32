"""A first run (new sqlite store, new cache: data parsed, model pretrained, schema migrated) prints fedlm's lines and
Hydra's, nothing else; Hydra's run log holds them; nothing lands in the working directory."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY, run_fedlm

# Every line a normal tiny run may print: fedlm's, then Hydra's own records (its loggers only, in its two
# formats). A library line (TF's C++ log, alembic, gRPC, a Python logger of TF's) matches none.
ALLOWED = [
    re.compile(p)
    for p in (
        r"pretraining tiny on [\d,]+ characters \(.*\) for \d+ steps of \d+x\d+",
        r"pretrain step \d+/\d+  loss \d+\.\d+  acc \d\.\d+  [\d.]+ steps/s  ETA \d+s",
        r"pretrained in \d+s, cached at \S+\.h5",
        r"MLflow run [0-9a-f]{32} in sqlite:///\S+",
        r"Expected accuracy for random guessing: .*",
        r"startup [\d.]+s \(.*\)",
        r"round +\d+/\d+  .*",
        r"final eval_loss \d+\.\d+  eval_accuracy \d\.\d+  eval_perplexity [\d.]+; model at \S+",
        r"(fedlm|data): .*",
        r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[HYDRA\] .*",  # hydra_logging's format (a multirun's jobs)
        r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[hydra[\w.]*\]\[\w+\] - .*",  # job_logging's, Hydra's loggers
    )
]
# Hydra's job_logging format, as fedlm's run log writes the console's lines.
LOG_LINE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[([\w.]+)\]\[\w+\] - (.*)")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """A tiny run on a store and a cache of its own, from an empty working directory: (result, run dir, cwd)."""
    tmp = tmp_path_factory.mktemp("first")
    cwd = tmp / "cwd"
    cwd.mkdir()
    result = run_fedlm(
        [*TINY, f"mlflow.tracking_uri=sqlite:///{tmp / 'store' / 'mlflow.db'}", f"cache_dir={tmp / 'cache'}"],
        tmp,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    return result, tmp / "run", cwd


@pytest.mark.e2e
def test_first_run_prints_only_fedlms_and_hydras_lines(first_run):
    result, _, _ = first_run
    lines = result.stdout.splitlines()
    assert any(line.startswith("pretrained in ") for line in lines)  # the first run indeed: pretrained here
    assert [line for line in lines if not any(p.fullmatch(line) for p in ALLOWED)] == []


@pytest.mark.e2e
def test_run_log_holds_the_console(first_run):
    result, run_dir, _ = first_run
    logged = [LOG_LINE.fullmatch(line) for line in (run_dir / "run.log").read_text().splitlines()]
    assert logged and None not in logged
    # Printed lines (logged with the stream's name) and Hydra's records (the same line on both), in console order.
    shown = [m.group(2) if m.group(1) in ("stdout", "stderr") else m.group(0) for m in logged]
    assert shown == result.stdout.splitlines()


@pytest.mark.e2e
def test_no_mlruns_in_the_working_directory(first_run):
    _, run_dir, cwd = first_run
    assert list(cwd.iterdir()) == []  # MLflow's default artifact root (./mlruns) was never made
    assert (run_dir.parent / "store" / "mlartifacts").is_dir()  # the artifacts are beside the store instead
