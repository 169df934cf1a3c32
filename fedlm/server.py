"""`python -m fedlm.server --dir DIR`: a team's MLflow tracking server, on PostgreSQL, with served artifacts.

It starts PostgreSQL on a data directory under DIR (created with `initdb` the first time; loopback only), then
`mlflow server --backend-store-uri postgresql://… --serve-artifacts --artifacts-destination DIR/artifacts`, prints
the `mlflow.tracking_uri=` to give runs, and stops both on Ctrl-C or SIGTERM. The tracking server listens on
127.0.0.1 unless `--host` says otherwise; PostgreSQL always listens on 127.0.0.1 only (MLflow is its one client).
PostgreSQL refuses to run as root: started by root, its programs run as `--db-user` (postgres). Light: no
TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from fedlm.errors import ConfigError

DATABASE = "mlflow"  # the database and its owner role, created by initdb


def postgres_program(name: str) -> str:
    """A PostgreSQL program: on PATH, or where Debian installs it (/usr/lib/postgresql/<version>/bin)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise ConfigError(
            f"PostgreSQL's {name} not found (on PATH or in /usr/lib/postgresql/*/bin); install PostgreSQL "
            "(Debian/Ubuntu: apt-get install postgresql) or run `mlflow server` on a database you have"
        )
    return found


def _as_user(user: str | None) -> list[str]:
    """The prefix that runs a PostgreSQL program as `user` (root only: PostgreSQL will not run as root). setpriv
    execs in place: no extra process, and the program stays in our session and process group."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]


def start_postgres(data: Path, port: int, user: str) -> subprocess.Popen:
    """PostgreSQL on `data` (initialised if new) at 127.0.0.1:`port`, its socket in `data`; ready when returned."""
    prefix = _as_user(user)
    data.mkdir(parents=True, exist_ok=True)
    if prefix:
        entry = pwd.getpwnam(user)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    data.chmod(0o700)  # PostgreSQL's requirement
    log = data.parent / "postgres.log"
    if not (data / "PG_VERSION").exists():
        initdb = [*prefix, postgres_program("initdb"), "-D", str(data), "-U", DATABASE, "--auth=trust", "-E", "UTF8"]
        done = subprocess.run(initdb, cwd=data, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(f"initdb failed for --dir {data.parent}: {done.stderr.strip().splitlines()[-1:]}")
    with open(log, "ab") as output:
        server = subprocess.Popen(
            [
                *prefix,
                postgres_program("postgres"),
                *("-D", str(data), "-p", str(port), "-k", str(data), "-c", "listen_addresses=127.0.0.1"),
            ],
            cwd=data,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            process_group=0,  # stopped by us, in order (see `stop`), not by a terminal's Ctrl-C
        )
    _wait_for(lambda: _database_ready(port), server, "PostgreSQL", log)
    return server


def _database_ready(port: int) -> bool:
    import psycopg2

    try:
        connection = psycopg2.connect(host="127.0.0.1", port=port, user=DATABASE, dbname="postgres", connect_timeout=2)
    except psycopg2.OperationalError:
        return False
    connection.autocommit = True  # CREATE DATABASE runs outside transactions (so no `with connection:`)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        connection.close()
    return True


def start_mlflow(database_port: int, artifacts: Path, host: str, port: int, workers: int) -> subprocess.Popen:
    """`mlflow server` on the database, serving artifacts from `artifacts`; ready (/health) when returned."""
    artifacts.mkdir(parents=True, exist_ok=True)
    log = artifacts.parent / "mlflow-server.log"
    with open(log, "ab") as output:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server"),
                *("--backend-store-uri", f"postgresql://{DATABASE}@127.0.0.1:{database_port}/{DATABASE}"),
                *("--serve-artifacts", "--artifacts-destination", str(artifacts)),
                *("--host", host, "--port", str(port), "--workers", str(workers)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            process_group=0,  # with its uvicorn workers: stopped as a group
            env=server_environment(os.environ),
        )
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    _wait_for(lambda: _answers(f"http://{local}:{port}/health"), server, "the MLflow server", log)
    return server


# A client's run context in the shell that starts the server: the server reads $MLFLOW_EXPERIMENT_ID as the default
# experiment of requests that name none, so one left by another tool's `mlflow.set_experiment` (another store's id)
# failed every job's run ("MLFLOW_EXPERIMENT_ID environment variable value `7` does not exist").
CLIENT_CONTEXT = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI")


def server_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """The MLflow server's environment: the shell's, without a client's run context (CLIENT_CONTEXT)."""
    return {k: v for k, v in environment.items() if k not in CLIENT_CONTEXT}


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError:
        return False
    return True


def _wait_for(ready, process: subprocess.Popen, what: str, log: Path, timeout: float = 120.0) -> None:
    """Until `ready()`; a process that exits first, or takes too long, or a failing check: the process group is
    killed (the caller has not got it yet to stop it) and the log's end is in the error."""
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is not None or not ready():  # exited: another server may hold the port
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
                raise ConfigError(f"{what} did not start (see {log}): {' | '.join(tail)}")
            time.sleep(0.2)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def stop(processes: list[tuple[subprocess.Popen, int]], timeout: float = 30.0) -> None:
    """Each (process, signal) in order, with its process group: the tracking server first (SIGTERM), then
    PostgreSQL (SIGINT: its fast shutdown); SIGKILL for what is left after `timeout`."""
    for process, sig in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedlm.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="PostgreSQL's data and the artifacts (kept)")
    parser.add_argument("--host", default="127.0.0.1", help="where the tracking server listens (default: loopback)")
    parser.add_argument("--port", type=int, default=5000, help="the tracking server's port")
    parser.add_argument("--db-port", type=int, default=5432, help="PostgreSQL's port, on 127.0.0.1")
    parser.add_argument("--db-user", default="postgres", help="the user PostgreSQL runs as when started by root")
    parser.add_argument("--workers", type=int, default=2, help="the tracking server's worker processes")
    args = parser.parse_args(argv)
    root = args.dir.resolve()
    processes: list[tuple[subprocess.Popen, int]] = []
    stopping = []

    def on_signal(signum: int, frame) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        started = time.monotonic()
        database = start_postgres(root / "postgres", args.db_port, args.db_user)
        processes.insert(0, (database, signal.SIGINT))
        database_seconds = time.monotonic() - started
        tracking = start_mlflow(args.db_port, root / "artifacts", args.host, args.port, args.workers)
        processes.insert(0, (tracking, signal.SIGTERM))
        print(
            f"fedlm.server: MLflow at http://{args.host}:{args.port} (PostgreSQL on 127.0.0.1:{args.db_port} ready "
            f"in {database_seconds:.1f}s, MLflow in {time.monotonic() - started - database_seconds:.1f}s more; "
            f"data in {root}); runs: mlflow.tracking_uri=http://{args.host}:{args.port}",
            flush=True,
        )
        while all(p.poll() is None for p, _ in processes):
            time.sleep(1.0)
        ended = next(p for p, _ in processes if p.poll() is not None)
        raise ConfigError(f"{'PostgreSQL' if ended is database else 'the MLflow server'} exited ({ended.returncode})")
    except KeyboardInterrupt:
        pass
    except ConfigError as e:
        print(f"fedlm.server: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)  # stopping: a second request must not cut the shutdown short
            stop(processes)
    if stopping:
        print(f"fedlm.server: stopped ({signal.Signals(stopping[0]).name})", flush=True)


if __name__ == "__main__":
    main()
