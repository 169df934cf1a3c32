"""Stop requests the way batch schedulers, `timeout` and scripts send them: to the whole process group of
`uv run python -m fedlm.run`. uv forwards SIGTERM (at once) and, without a terminal, SIGINT (200 ms later) to python,
which also gets the group's copy: every such request arrives twice and must still mean "stop after this round"."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest

from fedlm.fl import runtime
from fedlm.fl.checkpoint import RunDirectory
from tests.conftest import TINY, UV_RUN, assert_session_ended, read_until, start_fedlm

# Text samples at rounds 0, 2 and 3, 1000 characters a prompt: seconds of work right after round 2's (and 3's)
# progress line, so a signal sent on seeing that line arrives while the round is still in progress.
CONFIG = [*TINY, "rounds=3", "sample_every=2", "sample_length=1000"]


def _start(tmp_path: Path, experiment: str, *extra: str) -> subprocess.Popen:
    return start_fedlm([*CONFIG, *extra, f"mlflow.experiment_name={experiment}"], tmp_path, python=UV_RUN)


def _finish(proc: subprocess.Popen, before: str) -> str:
    after, _ = proc.communicate(timeout=300)
    assert_session_ended(proc.pid)
    out = before + after
    assert "Traceback" not in out and "Exception ignored" not in out, out[-3000:]
    return out


def _second_request(proc: subprocess.Popen, sig: signal.Signals) -> None:
    """A second, deliberate request, as a person sends it after reading the notice. There is no event to wait for:
    the time since the first is what tells it from the first one's forwarded copy."""
    time.sleep(runtime.REPEAT_WINDOW + 0.5)
    os.killpg(proc.pid, sig)


def _only_run(experiment: str):
    (run,) = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    return run


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_to_the_process_group_under_uv_stops_after_the_round(tmp_path, sig):
    """`kill -TERM -<pgid>` (what batch schedulers do), `timeout -s TERM 30 uv run …`, `kill -INT -<pgid>`."""
    proc = _start(tmp_path, f"group_{sig.name}")
    before = read_until(proc, r"^round 2/")
    os.killpg(proc.pid, sig)
    out = _finish(proc, before)
    assert proc.returncode == 128 + sig, out[-3000:]
    assert out.count(f"got {sig.name}") == 1, out[-3000:]  # one request, one notice
    assert RunDirectory(tmp_path / "run").rounds()[-1] == 2, out[-3000:]  # round 2 was finished and saved
    assert "last checkpoint: round 2" in out and "round 3/" not in out
    assert _only_run(f"group_{sig.name}").info.status == "KILLED"


@pytest.mark.e2e
def test_a_schedulers_warning_before_the_time_limit_stops_after_the_round(tmp_path):
    """SLURM's `--signal=USR2@<seconds>` (submitit's default warning, before the limit's SIGTERM and SIGKILL) goes to
    the job's python process itself (submitit starts no uv): the run stops after the round, as for SIGTERM, while
    there is still time; before, SIGUSR2's default action killed it mid-round and left its MLflow run RUNNING."""
    import psutil

    proc = _start(tmp_path, "usr2")
    before = read_until(proc, r"^round 2/")
    (python,) = [p for p in psutil.Process(proc.pid).children() if "fedlm.run" in " ".join(p.cmdline())]
    python.send_signal(signal.SIGUSR2)
    out = _finish(proc, before)
    assert proc.returncode == 128 + signal.SIGUSR2, out[-3000:]
    assert out.count("got SIGUSR2, stopping after this round") == 1, out[-3000:]
    assert RunDirectory(tmp_path / "run").rounds()[-1] == 2, out[-3000:]
    assert "last checkpoint: round 2" in out and "round 3/" not in out
    assert _only_run("usr2").info.status == "KILLED"


@pytest.mark.e2e
def test_a_second_signal_after_the_notice_stops_at_once_under_uv(tmp_path):
    proc = _start(tmp_path, "second_signal")
    before = read_until(proc, r"^round 2/")
    os.killpg(proc.pid, signal.SIGINT)
    before += read_until(proc, r"got SIGINT, stopping after this round")
    _second_request(proc, signal.SIGINT)
    out = _finish(proc, before)
    assert proc.returncode == 130, out[-3000:]
    # Round 2 was still in progress (its samples): given up, as asked; round 1 is the last one kept.
    assert RunDirectory(tmp_path / "run").rounds()[-1] == 1, out[-3000:]
    assert "last checkpoint: round 1" in out and "round 3/" not in out
    assert _only_run("second_signal").info.status == "KILLED"


@pytest.mark.e2e
def test_signals_after_the_last_round_let_the_run_finish_under_uv(tmp_path):
    """After the last round's training nothing is gained by stopping early: the final evaluation (off the eval_every
    schedule here, so after TFF's loop) and the final model are still made, even on a second request."""
    proc = _start(tmp_path, "after_last_round", "eval_every=2")
    before = read_until(proc, r"^round 3/3")
    os.killpg(proc.pid, signal.SIGINT)
    before += read_until(proc, r"got SIGINT after the last round")
    _second_request(proc, signal.SIGINT)
    out = _finish(proc, before)
    assert proc.returncode == 130, out[-3000:]  # it was asked to stop: a sweep stops here too
    assert "final eval_loss" in out and "(final evaluation)" in out, out[-3000:]
    run = _only_run("after_last_round")
    assert run.info.status == "FINISHED"
    assert 3 in {m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "eval/loss")}
    assert "model/final_model.h5" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "model")}


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_during_pretraining_is_one_line_and_leaves_nothing(tmp_path, sig):
    """Ctrl-C (or a scheduler's SIGTERM) while the first run pretrains: no traceback, no MLflow run, no cached model;
    it was Python's KeyboardInterrupt traceback (SIGINT) or a silent death (SIGTERM)."""
    cache = tmp_path / "cache"  # empty: this run pretrains
    proc = _start(tmp_path, f"startup_{sig.name}", f"cache_dir={cache}", "pretrain.steps=100000")
    before = read_until(proc, r"^pretrain step ")
    os.killpg(proc.pid, sig)
    out = _finish(proc, before)
    assert proc.returncode == 128 + sig, out[-3000:]
    (notice,) = [line for line in out.splitlines() if line.startswith("fedlm: ")]
    assert notice.startswith(f"fedlm: got {sig.name} during start-up: stopped before the first round"), notice
    assert not mlflow.search_runs(experiment_names=[f"startup_{sig.name}"], output_format="list")
    assert not list((cache / "pretrained").glob("*.h5")), list(cache.rglob("*"))


# A launcher's job process with SIGINT blocked, as Ray's workers start their jobs: the mask is inherited by
# `uv run`, by python and (unless fedlm clears it) by TFF's worker, which TFF stops with SIGINT and then waits for.
SIGINT_BLOCKED = [
    "python3",
    "-c",
    "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); os.execvp(sys.argv[1], "
    "sys.argv[1:])",
    *UV_RUN,
]


@pytest.mark.e2e
def test_a_job_started_with_sigint_blocked_exits_and_leaves_no_worker(tmp_path):
    """It used to finish its rounds and then hang for ever at exit, waiting for its TFF worker."""
    proc = start_fedlm([*TINY, "rounds=1", "mlflow.experiment_name=sigint_blocked"], tmp_path, python=SIGINT_BLOCKED)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("the job did not exit: its TFF worker never got TFF's SIGINT") from None
    assert_session_ended(proc.pid)
    assert proc.returncode == 0, out[-3000:]
    assert _only_run("sigint_blocked").info.status == "FINISHED"
