"""`python -m fedlm.worker` and runs on remote workers, end to end on loopback: the worker stops on a signal with its
status and leaves nothing; a run whose worker dies stops cleanly at `runtime.round_timeout_s`, naming it, and
`resume=` completes it, once the worker is back, with the uninterrupted local run's result; an unreachable worker
is a config error before TensorFlow."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time

import mlflow
import pytest

from tests import remote_workers
from tests.conftest import TINY, UV_RUN, assert_session_ended, read_until, run_fedlm, start_fedlm, start_in_session

pytestmark = pytest.mark.e2e  # each starts fedlm.worker or fedlm.run in a subprocess

# runtime.round_timeout_s: a tiny round takes ~1 s on an idle machine, the first one on 2 loaded cores ~30 s
TIMEOUT_S = 45
EXPERIMENT = "remote-workers"
# The Facts of issue 16: resumed after a restarted worker, the run ended within 1.2e-7 of the local run.
RESUMED_TOLERANCE, PERPLEXITY_TOLERANCE = 1.2e-7, 4e-5


def run_id(output: str) -> str:
    return re.search(r"MLflow run ([0-9a-f]{32})", output).group(1)


def history(run: str) -> dict[str, dict[int, float]]:
    """The run's training and evaluation metrics by step (not their timings, which differ)."""
    client = mlflow.MlflowClient()
    keys = [k for k in client.get_run(run).data.metrics if k.split("/")[0] in ("train", "eval") and "seconds" not in k]
    return {k: {m.step: m.value for m in client.get_metric_history(run, k)} for k in keys}


def test_the_worker_command_says_where_it_listens_and_stops_on_sigterm_through_uv_run():
    port = remote_workers.free_port()
    proc = start_in_session([*UV_RUN, "-m", "fedlm.worker", "--port", str(port)])
    try:
        line = read_until(proc, "listening")
        assert f"listening on [::]:{port}, every interface" in line and "private networks only" in line
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # it accepts connections
        os.killpg(proc.pid, signal.SIGTERM)  # python gets it twice: directly and forwarded by uv
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "stopped by SIGTERM" in out
    assert_session_ended(proc.pid)


def test_a_worker_started_with_sigint_blocked_and_ignored_stops_on_sigint():
    """A launcher's process may block SIGINT (Ray's workers do) or ignore it (a shell's background job): both are
    inherited through exec, and TFF's binary is stopped with SIGINT."""
    port = remote_workers.free_port()
    code = (
        "import signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}); "
        "signal.signal(signal.SIGINT, signal.SIG_IGN); from fedlm import worker; worker.main(sys.argv[1:])"
    )
    proc = start_in_session([sys.executable, "-c", code, "--port", str(port)])
    read_until(proc, "listening")
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT, out
    assert "stopped by SIGINT" in out and "killed" not in out  # the binary stopped on its SIGINT too
    assert_session_ended(proc.pid)


def test_an_unreachable_worker_is_a_config_error_before_tensorflow(tmp_path):
    address = f"127.0.0.1:{remote_workers.free_port()}"
    started = time.monotonic()
    result = run_fedlm([*TINY, f"runtime.workers=[{address}]"], tmp_path)
    assert result.returncode == 2, result.stdout
    assert f"fedlm: config error: runtime.workers: 1 of 1 unreachable ({address}: Connection refused)" in result.stdout
    assert "MLflow run" not in result.stdout and "startup" not in result.stdout
    print(f"refused after {time.monotonic() - started:.1f} s")


def test_a_dead_worker_stops_the_run_naming_it_and_resume_ends_as_the_local_run(tmp_path):
    args = [*TINY, "rounds=4", f"mlflow.experiment_name={EXPERIMENT}", f"runtime.round_timeout_s={TIMEOUT_S}"]
    local = run_fedlm(args, tmp_path, run_dir="local")
    assert local.returncode == 0, local.stdout[-3000:]

    with remote_workers.workers(2, tmp_path) as nodes:
        workers = f"runtime.workers=[{nodes[0].address},{nodes[1].address}]"
        proc = start_fedlm([*args, workers], tmp_path, run_dir="remote")
        head = read_until(proc, r"^round\s+1/4")
        nodes[1].kill()  # as a crash: the next round's slice has nowhere to go, and TFF retries it forever
        killed = time.monotonic()
        out, _ = proc.communicate(timeout=TIMEOUT_S + 300)
        detected = time.monotonic() - killed
        assert_session_ended(proc.pid)
        out = head + out
        assert proc.returncode == 1, out[-3000:]
        remote_run = run_id(out)
        assert f"did not finish within runtime.round_timeout_s={TIMEOUT_S} s: worker {nodes[1].address}" in out
        assert nodes[0].address + " (" not in out  # the live worker is not blamed
        assert re.search(rf"MLflow run {remote_run} marked FAILED; last checkpoint: round [123] in", out), out
        assert f"resume={tmp_path / 'remote'}" in out
        assert mlflow.get_run(remote_run).info.status == "FAILED"

        nodes[1].start()  # the same port again
        resumed = run_fedlm([*args, workers, f"resume={tmp_path / 'remote'}"], tmp_path, run_dir="remote")
        assert resumed.returncode == 0, resumed.stdout[-3000:]
        assert run_id(resumed.stdout) == remote_run
    print(f"dead worker detected after {detected:.1f} s (round_timeout_s={TIMEOUT_S})")

    assert mlflow.get_run(remote_run).info.status == "FINISHED"
    want, got = history(run_id(local.stdout)), history(remote_run)
    assert set(got) == set(want) and want
    for key, steps in want.items():
        assert set(got[key]) == set(steps), key  # each step once, the resumed rounds included
        tolerance = PERPLEXITY_TOLERANCE if "perplexity" in key else RESUMED_TOLERANCE
        for step, value in steps.items():
            assert got[key][step] == pytest.approx(value, rel=tolerance, abs=tolerance), (key, step)
