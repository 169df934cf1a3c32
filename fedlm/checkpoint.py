"""Checkpoint and resume: the server state saved every `checkpoint_every` rounds, and the run a `resume=` continues.

A run directory (Hydra's output directory of the run's first invocation) holds:

    checkpoints/program_state_<round>/  the server state (TFF's FileProgramStateManager), the last `checkpoint_keep`
    checkpoints/config.yaml             the resolved config the run started with
    checkpoints/mlflow_run.json         the MLflow run it logs to
    checkpoints/.lock                   locked (flock) while a fedlm process trains the run
    final_model.h5

The server state is all a resumed run needs. Client sampling (TFF's uniform sampler draws round r's clients from a
generator seeded with (seed, r)) and client shuffling (round r's datasets are shuffled with an op seed made of seed
and r, under the global seed `seed`) are functions of (seed, round): the rounds after the last checkpoint are
recomputed exactly, without saved RNG state.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import mlflow
import tensorflow as tf
import tensorflow_federated as tff
from mlflow.exceptions import MlflowException
from omegaconf import OmegaConf

from fedlm.config import ConfigError, to_container
from fedlm.runtime import RunFailed
from fedlm.tracking import flatten

RUN_DIR_TAG = "fedlm.run_dir"
# Keys a resumed run may change: they do not change what the finished rounds computed (where files go, speed).
MUTABLE_KEYS = ("rounds", "resume", "checkpoint_every", "checkpoint_keep", "cache_dir", "data.cache_dir",
                "mlflow.tracking_uri", "runtime.max_concurrent_clients")


class CheckpointError(RunFailed):
    """A checkpoint could not be written or read; the message names the directory and the round."""


class RoundCheckpoints(tff.program.ProgramStateManager):
    """TFF's `FileProgramStateManager`, written every `every` rounds, keeping the last `keep`.

    `run_training_process` hands it the state after every round (`rounds_per_saving_program_state=1`), after the
    round's metrics were released (and passed the divergence check); `check_state` may refuse the state itself.
    Rounds that are not written stay in memory until the next one, so a run stopped by Ctrl-C, SIGTERM or an error
    can still write its last completed round (`save_pending`). Writes are atomic (TFF writes a temporary directory, then renames it).
    """

    def __init__(self, directory: str | os.PathLike, every: int, keep: int,
                 check_state: Callable[[Any, int], None] | None = None):
        self.directory = str(directory)
        self._check_state = check_state  # raises for a state that must not be kept (e.g. NaN weights)
        self._files = tff.program.FileProgramStateManager(self.directory, keep_total=keep, keep_first=False)
        self._every = every
        self._pending: tuple[Any, int] | None = None
        self.saved_round: int | None = None  # the latest round on disk

    async def get_versions(self) -> list[int] | None:
        return await self._files.get_versions()

    async def load(self, version: int, structure: Any) -> Any:
        try:
            state = await self._files.load(version, structure)
        except Exception as e:  # TFF raises several types for a checkpoint of another structure
            raise CheckpointError(
                f"cannot load the checkpoint of round {version} from {self.directory}: {e} "
                "(written by another version of fedlm or TFF?)"
            ) from e
        self.saved_round = version
        return state

    async def save(self, program_state: Any, version: int) -> None:
        if self._check_state is not None:
            self._check_state(program_state, version)
        self._pending = (program_state, version)
        if version % self._every == 0:
            await self._write()

    async def _write(self) -> None:
        state, version = self._pending
        try:
            await self._files.save(state, version)
        except (OSError, tf.errors.OpError) as e:  # disk full, directory gone or read-only (tf.io.gfile raises OpError)
            raise CheckpointError(
                f"cannot write the checkpoint of round {version} to {self.directory}: {e}; "
                f"the last one written is round {self.saved_round}"
            ) from e
        self._pending = None
        self.saved_round = version

    def save_pending(self, through: int | None = None) -> int | None:
        """Write the latest completed round (if <= `through`) unless on disk already; return the latest on disk."""
        if self._pending is not None and (through is None or self._pending[1] <= through):
            asyncio.get_event_loop().run_until_complete(self._write())
        return self.saved_round


class RunDirectory:
    """A run's directory: its checkpoints, the config and MLflow run they belong to, and the lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).resolve()
        self.checkpoints = self.path / "checkpoints"

    def rounds(self) -> list[int]:
        """Rounds with a checkpoint on disk, ascending."""
        if not self.checkpoints.is_dir():
            return []
        versions = asyncio.get_event_loop().run_until_complete(
            tff.program.FileProgramStateManager(str(self.checkpoints)).get_versions()
        )
        return versions or []

    def record_start(self, config_yaml: str, run_id: str) -> None:
        """The config and MLflow run this directory's checkpoints belong to (written before round 1)."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        for name, text in (("config.yaml", config_yaml), ("mlflow_run.json", json.dumps({"run_id": run_id}))):
            tmp = self.checkpoints / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, self.checkpoints / name)

    def config(self) -> dict[str, Any]:
        """The run's resolved config, flattened ("optimizer.learning_rate": 0.5)."""
        return flatten(OmegaConf.to_container(OmegaConf.load(self.checkpoints / "config.yaml"), resolve=True), sep=".")

    def run_id(self) -> str | None:
        path = self.checkpoints / "mlflow_run.json"
        return json.loads(path.read_text())["run_id"] if path.exists() else None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock while training it: a second process cannot train (or resume) it at the same time.

        flock is released by the kernel when the process dies, even by SIGKILL: a stale lock cannot remain.
        """
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        with open(self.checkpoints / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise ConfigError(f"{self.path} is being trained by another fedlm process (pid {f.read().strip()})")
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def in_use(self) -> bool:
        try:
            with self.locked():
                return False
        except ConfigError:
            return True


def flat_config(cfg: Any) -> dict[str, Any]:
    """The resolved config, flattened, enums as their names: comparable with a saved `config.yaml`."""
    return flatten(to_container(cfg), sep=".")


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: saved -> current' for every key that differs, except MUTABLE_KEYS."""
    keys = sorted((set(saved) | set(current)) - set(MUTABLE_KEYS))
    missing = "<absent>"
    return [f"{k}: {saved.get(k, missing)!r} -> {current.get(k, missing)!r}"
            for k in keys if saved.get(k, missing) != current.get(k, missing)]


@dataclasses.dataclass(frozen=True)
class Resume:
    run_id: str
    directory: RunDirectory
    round: int  # the latest checkpoint: training continues with the round after it


def check_fresh(directory: RunDirectory) -> None:
    """A new run must not start in a directory holding another run's checkpoints (TFF would silently load them)."""
    if rounds := directory.rounds():
        raise ConfigError(
            f"hydra.run.dir={str(directory.path)!r} already holds checkpoints (rounds {rounds}) of MLflow run "
            f"{directory.run_id()}: continue it with resume={directory.path}, "
            "or choose another hydra.run.dir"
        )


def find_run_to_resume(cfg: Any) -> Resume:
    """The run `cfg.resume` points at, checked: same config (but MUTABLE_KEYS), not running, has a checkpoint.

    `resume=true` means the most recently started run of experiment `mlflow.experiment_name` that did not finish
    (RUNNING after a crash or SIGKILL, KILLED, FAILED), has a checkpoint, is not being trained by a live process,
    and whose config matches. `resume=<directory>` or `resume=<MLflow run id>` name one run.
    """
    current = flat_config(cfg)
    value = cfg.resume
    if value is True:
        return _latest_matching_unfinished(cfg.mlflow.experiment_name, current, int(cfg.rounds))
    value = str(value)
    shown = repr(value)
    client = mlflow.MlflowClient()
    if os.path.isdir(value):
        directory = RunDirectory(value)
        run_id = directory.run_id()
        if run_id is None:
            raise ConfigError(f"resume={value!r}: not a fedlm run directory (no checkpoints/mlflow_run.json)")
        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            raise ConfigError(f"resume={value!r}: its MLflow run {run_id} is not in {mlflow.get_tracking_uri()}; "
                              "set mlflow.tracking_uri to the store the run was logged to") from e
    elif re.fullmatch(r"[0-9a-f]{32}", value):
        try:
            run = client.get_run(value)
        except MlflowException as e:
            raise ConfigError(f"resume={value!r}: no such MLflow run in {mlflow.get_tracking_uri()}") from e
        if RUN_DIR_TAG not in run.data.tags:
            raise ConfigError(f"resume={value!r}: the run has no {RUN_DIR_TAG} tag "
                              "(not started by a fedlm that writes checkpoints)")
        directory = RunDirectory(run.data.tags[RUN_DIR_TAG])
    else:
        raise ConfigError(f"resume={value!r}: neither an existing directory nor an MLflow run id (32 hex digits); "
                          "allowed: true, false, a run directory, an MLflow run id")
    rounds = directory.rounds()
    if not rounds:
        raise ConfigError(f"resume={value!r}: no checkpoint in {directory.checkpoints} (the run stopped before "
                          "saving its start, or the directory was moved); start it again without resume")
    if directory.in_use():
        raise ConfigError(f"resume={value!r}: {directory.path} is being trained by another fedlm process")
    if diff := config_differences(directory.config(), current):
        raise ConfigError(f"resume={value!r}: the config differs from the run's in {', '.join(diff)}; "
                          f"only {', '.join(MUTABLE_KEYS)} may change when resuming")
    _check_rounds(shown, rounds[-1], int(cfg.rounds), run.info.status == "FINISHED")
    return Resume(run.info.run_id, directory, rounds[-1])


def _latest_matching_unfinished(experiment_name: str, current: Mapping[str, Any], total_rounds: int) -> Resume:
    where = f"experiment {experiment_name!r} of {mlflow.get_tracking_uri()}"
    experiment = mlflow.get_experiment_by_name(experiment_name)
    runs = [] if experiment is None else mlflow.search_runs(
        [experiment.experiment_id], filter_string="attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], output_format="list",
    )
    closest = None
    for run in runs:
        directory = RunDirectory(run.data.tags.get(RUN_DIR_TAG, "/nonexistent"))
        rounds = directory.rounds()
        if not rounds or directory.in_use():
            continue
        diff = config_differences(directory.config(), current)
        if not diff:
            _check_rounds("true", rounds[-1], total_rounds, finished=False)
            return Resume(run.info.run_id, directory, rounds[-1])
        closest = closest or (run.info.run_id, directory.path, diff)
    message = f"resume=true: no unfinished run with this config and a checkpoint in {where}"
    if closest:
        run_id, path, diff = closest
        message += (f"; the latest unfinished one, {run_id} in {path}, differs in {', '.join(diff)} "
                    f"(only {', '.join(MUTABLE_KEYS)} may change when resuming)")
    raise ConfigError(message)


def _check_rounds(value: str, saved: int, total: int, finished: bool) -> None:
    if saved > total:
        raise ConfigError(f"resume={value}: the run's last checkpoint is round {saved}, beyond rounds={total}; "
                          f"set rounds >= {saved}")
    if finished and saved == total:
        raise ConfigError(f"resume={value}: the run already finished its {total} rounds; "
                          f"set rounds > {total} to train it further")
