"""Before any training: can the run's results be kept? MLflow store reachable, output directories writable, room.

Each check raises `ConfigError` naming the key, the value, what went wrong and what to do, so that a run never
trains for an hour and then fails to save. Light imports only: Hydra imports this module for its callback.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from fedlm.errors import ConfigError

_MIB = 2**20
# Database stores MLflow reaches through SQLAlchemy: scheme -> (the default driver module, the package that has it).
_SQL_DRIVERS = {
    "postgresql": ("psycopg2", "psycopg2-binary"),
    "mysql": ("MySQLdb", "mysqlclient"),
    "mssql": ("pyodbc", "pyodbc"),
}


def _hide_password(uri: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", uri)


def check_writable_dir(path: str | os.PathLike, key: str) -> None:
    """Create `path` if missing and write (and sync) a probe file in it: unwritable, read-only or full -> error."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        raise ConfigError(
            f"{key}={str(path)!r}: cannot write there ({e.strerror or e}); choose a writable directory with free space"
        ) from e


def check_free_space(path: str | os.PathLike, need_bytes: int, key: str, what: str) -> None:
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise ConfigError(
            f"{key}={str(path)!r}: {free / _MIB:.1f} MiB free on its disk, but this run needs about "
            f"{need_bytes / _MIB:.1f} MiB ({what}); free some space or choose another directory"
        )


def run_dir_bytes_needed(model_bytes: int, checkpoint_keep: int) -> int:
    """Checkpoints kept (+1 being written before the oldest goes), each up to 3x the weights (weights and up to
    two server-optimizer slots, e.g. Adam's), plus the final Keras model."""
    return (checkpoint_keep + 1) * 3 * model_bytes + model_bytes


def check_tracking_store(uri: str, timeout: float = 5.0) -> None:
    """A sqlite/file store's directory must be writable; a tracking server must answer (within `timeout`)."""
    where = "mlflow.tracking_uri (or $MLFLOW_TRACKING_URI)"
    if uri.startswith("sqlite:///"):
        directory = Path(uri[len("sqlite:///") :]).parent
        try:
            check_writable_dir(directory, "directory")
        except ConfigError as e:
            raise ConfigError(f"{where}={uri!r}: the sqlite store's {e}") from e
    elif uri.startswith("file:") or os.path.isabs(uri):  # MLflow's file store
        directory = Path(uri[len("file://") :] if uri.startswith("file://") else uri.removeprefix("file:"))
        try:
            check_writable_dir(directory, "directory")
        except ConfigError as e:
            raise ConfigError(f"{where}={uri!r}: the file store's {e}") from e
    elif uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # the server answered (an auth error, a proxy without /health): reachable
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(
                f"{where}={uri!r}: MLflow tracking server unreachable ({reason}); start it "
                f"(`mlflow server --host ... --port ...`) or set mlflow.tracking_uri=null for the local sqlite store"
            ) from e
    elif (scheme := uri.partition("://")[0].partition("+")) and scheme[0] in _SQL_DRIVERS:
        # MLflow's SQLAlchemy store imports the database driver only when it first connects, after the imports.
        driver = scheme[2] or _SQL_DRIVERS[scheme[0]][0]
        if importlib.util.find_spec(driver) is None:
            raise ConfigError(
                f"{where}={_hide_password(uri)!r}: the database driver {driver!r} is not installed; add it to the "
                f"environment (`uv add {scheme[2] or _SQL_DRIVERS[scheme[0]][1]}`) or use an http:// tracking server"
            )
    # other schemes (databricks, ...): MLflow's own client reports its errors


# Launchers (their `_target_`) that run a sweep's jobs on other machines: the jobs must reach the store over the
# network. Ray's and RQ's may too (a cluster address, a queue's workers); fedlm ships neither.
REMOTE_LAUNCHERS = ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",)


def check_store_shared_by_jobs(uri: str, launcher_target: str) -> None:
    """A sweep whose jobs run on other machines needs a store they all reach: a tracking server or a database server.
    A sqlite or file store is a path on this machine (on a shared filesystem, sqlite's locking is unreliable)."""
    if launcher_target not in REMOTE_LAUNCHERS:
        return
    if uri.startswith(("sqlite:", "file:")) or os.path.isabs(uri):
        launcher = launcher_target.rsplit(".", 1)[-1]
        raise ConfigError(
            f"mlflow.tracking_uri (or $MLFLOW_TRACKING_URI)={uri!r}: a local store, but hydra/launcher ({launcher}) "
            "runs the jobs on other machines; give a store they all reach: an MLflow server "
            "(mlflow.tracking_uri=http://<host>:<port>, e.g. started by python -m fedlm.server) or "
            "postgresql://<user>@<host>:<port>/<database>"
        )


def check_run_dir_unused(path: str | os.PathLike, key: str) -> None:
    """A new run must not start in a directory that holds another run: Hydra would rewrite that run's `.hydra`
    record (config, overrides) before fedlm runs, and its checkpoints would be another run's."""
    record = Path(path) / ".hydra" / "hydra.yaml"
    if record.exists():
        raise ConfigError(
            f"{key}={str(path)!r}: already holds another run (its Hydra record {record.parent}); choose another "
            f"{key}, or continue that run with resume={path}"
        )


class OutputDirCheck(Callback):
    """Hydra creates the output directory and writes its record there before fedlm runs; an unwritable one would
    end in Hydra's traceback, and one holding another run would lose that run's record.

    Checked here first, with one line naming the key and exit code 2 like every config error.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir", new_run=config.get("resume") is False)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir", new_run=False)

    @staticmethod
    def _check(path: str, key: str, new_run: bool) -> None:
        try:
            if new_run:  # resuming writes the continued run's own record: the same config, by the same run
                check_run_dir_unused(path, key)
            check_writable_dir(path, key)
        except ConfigError as e:
            print(f"fedlm: config error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
