"""The MLflow store unavailable mid-run, as users meet it: a sqlite store locked by another process for longer than
MLflow's own 20 s wait, and a store on a filesystem that fills up. No round's metrics may be lost, no traceback
shown, and the run's status reported as the store has it."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from fedlm.tracking import ledger
from tests.conftest import TINY, assert_session_ended, read_until, run_fedlm, start_fedlm

CONFIG = [*TINY, "rounds=4"]

# Another process's write transaction: BEGIN EXCLUSIVE keeps readers and writers out until it commits, which it
# does when its stdin closes.
_HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=120, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("COMMIT")
"""


@contextlib.contextmanager
def exclusive_lock(db: Path) -> Iterator[None]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=120)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


@pytest.fixture
def small_filesystem(tmp_path) -> Iterator[Path]:
    """A 32 MiB tmpfs of the test's own, unmounted whatever happens (mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mount = tmp_path / "small_fs"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "fedlm-test", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(mount)], check=True)  # still open in a process: detach it


def fill(directory: Path) -> Path:
    """A file taking all the space left on `directory`'s filesystem."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to write (and fail) on close
        try:
            while True:
                f.write(b"\0" * 2**16)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


def finish(proc: subprocess.Popen, out: str) -> str:
    try:
        rest, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_session_ended(proc.pid)
    return out + rest


def only_run(uri: str, experiment: str):
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def wait_for_round_in_store(uri: str, experiment: str, round_num: int, timeout: float = 120) -> None:
    """Until the store has round `round_num`'s train loss (written after its progress line, with its other metrics)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # the experiment or run may not exist yet
            client, run = only_run(uri, experiment)
            if round_num in {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}:
                return
        time.sleep(0.2)
    raise AssertionError(f"round {round_num}'s metrics not in {uri} after {timeout} s")


def assert_every_step_once(client: mlflow.MlflowClient, run_id: str, rounds: int) -> None:
    """Each round's metrics in the store, each step once (a replayed or recomputed step logged twice would show)."""
    steps = {
        key: sorted(m.step for m in client.get_metric_history(run_id, key))
        for key in ("train/loss", "train/seconds", "eval/loss", "eval/accuracy")
    }
    assert steps == {
        "train/loss": list(range(1, rounds + 1)),
        "train/seconds": list(range(1, rounds + 1)),
        "eval/loss": list(range(rounds + 1)),
        "eval/accuracy": list(range(rounds + 1)),
    }, steps


def assert_no_traceback(out: str) -> None:
    assert "Traceback" not in out and "OperationalError" not in out and "sqlalche" not in out, out[-5000:]


@pytest.mark.e2e
def test_a_store_locked_longer_than_mlflows_timeout_loses_no_metric(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    proc = start_fedlm([*CONFIG, f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=locked"], tmp_path)
    out = ""
    try:
        out = read_until(proc, r"^round +1/")
        with exclusive_lock(db):  # released once fedlm says the store is unavailable: after MLflow's 20 s wait
            out += read_until(proc, r"MLflow store .* unavailable")
    finally:
        out = finish(proc, out)
    assert proc.returncode == 0, out[-5000:]
    assert_no_traceback(out)
    ledger_file = tmp_path / "run" / "checkpoints" / ledger.FILE_NAME
    (unavailable,) = [line for line in out.splitlines() if re.search("MLflow store .* unavailable", line)]
    assert uri in unavailable and str(ledger_file) in unavailable
    client, run = only_run(uri, "locked")
    assert run.info.status == "FINISHED"
    assert_every_step_once(client, run.info.run_id, rounds=4)
    assert ledger.MetricsLedger(ledger_file).pending() == []  # the store acknowledged every entry


@pytest.mark.e2e
def test_a_store_on_a_full_filesystem_stops_cleanly_and_resume_logs_every_step_once(tmp_path, small_filesystem):
    uri = f"sqlite:///{small_filesystem / 'mlflow.db'}"
    args = [*CONFIG, f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=full", "mlflow.store_retry_seconds=3"]
    proc = start_fedlm(args, tmp_path)
    out = ""
    try:
        out = read_until(proc, r"^round +1/")
        wait_for_round_in_store(uri, "full", 1)  # the line is printed as the round's metrics go to the store
        fill(small_filesystem)  # from here on the store cannot write: not a metric, not a status
        out = finish(proc, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            (small_filesystem / "filler").unlink()
    assert proc.returncode == 1, out[-5000:]
    assert_no_traceback(out)
    ledger_file = tmp_path / "run" / "checkpoints" / ledger.FILE_NAME
    (error,) = [line for line in out.splitlines() if line.startswith("fedlm: error:")]
    assert uri in error and str(ledger_file) in error, error
    assert "marked FAILED" not in out and "could not mark MLflow run" in out, out[-5000:]
    client, run = only_run(uri, "full")
    assert run.info.status == "RUNNING"  # what the message said: the store never took another status
    unlogged = ledger.MetricsLedger(ledger_file).pending()
    assert unlogged and min(e.step for e in unlogged) == 2  # round 2 on: kept in the run directory only

    resumed = run_fedlm([*args, f"resume={tmp_path / 'run'}"], tmp_path, run_dir="resumed")
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert_no_traceback(resumed.stdout)
    client, run = only_run(uri, "full")
    assert run.info.status == "FINISHED"
    assert_every_step_once(client, run.info.run_id, rounds=4)
    assert ledger.MetricsLedger(ledger_file).pending() == []
