"""Shared fixtures: an isolated cache and MLflow store per test session, and one tiny real run for the session."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "conf")

TINY = [
    "model=tiny", "rounds=2", "clients_per_round=2", "eval_every=1", "eval_clients=3",
    "max_batches_per_client=2", "pretrain.steps=4", "pretrain.log_every=2", "pretrain.batch_size=4",
    "seq_length=20", "pretrain.seq_length=20", "sample_length=40",
]
TINY_RUN_EXPERIMENT = "e2e"


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedlm")
    os.environ["FEDLM_CACHE_DIR"] = str(root / "cache")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    yield root


def compose_config(overrides: list[str] | None = None, config_name: str = "config"):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name=config_name, overrides=overrides or [])


def run_fedlm(args: list[str], tmp_path: Path, timeout: float = 600, module: str = "fedlm.run") -> subprocess.CompletedProcess:
    """Run `python -m <module>` (a fedlm entry point) in its own session, then assert nothing of that session is
    left running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    out, _ = proc.communicate(timeout=timeout)  # would hang here if an orphaned worker kept stdout open
    left = session_processes(proc.pid, grace=10.0)
    assert not left, f"processes left behind: {[p.cmdline() for p in left]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def session_processes(session_id: int, grace: float = 0.0) -> list[psutil.Process]:
    """Live processes of the session a test started (its own, not the machine's), after up to `grace` seconds.

    Zombies are not counted: they have exited and wait only for init to reap them. The grace covers helper
    processes (joblib's resource tracker) that exit on their own a moment after their parent.
    """
    def alive_in_session(p: psutil.Process) -> bool:
        try:
            return os.getsid(p.pid) == session_id and p.status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, ProcessLookupError, PermissionError):
            return False

    deadline = time.monotonic() + grace
    while True:
        left = [p for p in psutil.process_iter() if alive_in_session(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> subprocess.CompletedProcess:
    """One tiny real `python -m fedlm.run` (experiment TINY_RUN_EXPERIMENT), shared by every test that reads a run."""
    tmp = tmp_path_factory.mktemp("run")
    result = run_fedlm([*TINY, f"mlflow.experiment_name={TINY_RUN_EXPERIMENT}"], tmp)
    assert result.returncode == 0, result.stdout[-3000:]
    return result


@pytest.fixture(scope="session")
def tiny_run_id(tiny_run) -> str:
    import mlflow

    (run,) = mlflow.search_runs(experiment_names=[TINY_RUN_EXPERIMENT], output_format="list")
    return run.info.run_id
