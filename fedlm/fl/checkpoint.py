"""Checkpoint and resume: the server state saved every `checkpoint_every` rounds, and the run a `resume=` continues.

A run directory (Hydra's output directory of the run's first invocation) holds:

    checkpoints/program_state_<round>/  the server state (TFF's FileProgramStateManager), the last `checkpoint_keep`
    checkpoints/config.yaml             the resolved config the run started with
    checkpoints/mlflow_run.json         the MLflow run it logs to
    checkpoints/metrics.jsonl           every round's metrics, kept until the store has them (fedlm/tracking/ledger.py)
    checkpoints/.lock                   locked (flock) while a fedlm process trains the run
    final_model.h5

Which run a `resume=` continues is the tracking layer's (fedlm/tracking/resume.py). The server state is all a
resumed run needs. Client sampling (TFF's uniform sampler draws round r's clients from a
generator seeded with (seed, r)) and client shuffling (round r's datasets are shuffled with an op seed made of seed
and r, under the global seed `seed`) are functions of (seed, round): the rounds after the last checkpoint are
recomputed exactly, without saved RNG state.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff
from omegaconf import OmegaConf

from fedlm.errors import ConfigError, RunFailed
from fedlm.fl.runtime import uninterrupted
from fedlm.utils import atomic_write_text, flatten, run_sync


class CheckpointError(RunFailed):
    """A checkpoint could not be written or read; the message names the directory and the round."""


class RoundCheckpoints(tff.program.ProgramStateManager):
    """TFF's `FileProgramStateManager`, written every `every` rounds, keeping the last `keep`.

    `run_training_process` hands it the state after every round (`rounds_per_saving_program_state=1`), after the
    round's metrics were released (and passed the divergence check); `check_state` may refuse the state itself.
    Rounds that are not written stay in memory until the next one, so a run stopped by Ctrl-C, SIGTERM or an error
    can still write its last completed round (`save_pending`). Writes are atomic (TFF writes a temporary directory,
    then renames it).
    """

    def __init__(
        self, directory: str | os.PathLike, every: int, keep: int, check_state: Callable[[Any, int], None] | None = None
    ):
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

    async def load_latest(self, structure: Any) -> tuple[Any, int]:
        """The latest checkpoint that reads back; a corrupt one (a disk error, a partial copy) is reported and the one
        before it is used, as the rounds after it are recomputed exactly (module docstring). (None, 0): none."""
        versions = await self.get_versions()
        errors = []
        for version in sorted(versions or [], reverse=True):
            try:
                return await self.load(version, structure), version
            except CheckpointError as e:
                errors.append(str(e))
                print(f"fedlm: {e}; trying the checkpoint before it", flush=True)
        if errors:
            raise CheckpointError(
                f"no checkpoint in {self.directory} can be read (rounds {sorted(versions)}); "
                "start the run again without resume"
            )
        return None, 0

    async def save(self, program_state: Any, version: int) -> None:
        if self._check_state is not None:
            self._check_state(program_state, version)
        self._pending = (program_state, version)
        if version % self._every == 0:
            await self._write()

    async def _write(self) -> None:
        state, version = self._pending
        try:
            with uninterrupted():  # a stop-now in the middle would leave it on disk but not recorded here
                await self._files.save(state, version)
                self._pending = None
                self.saved_round = version
        except (OSError, tf.errors.OpError) as e:  # disk full, directory gone or read-only (tf.io.gfile raises OpError)
            for partial in Path(self.directory).glob(f"program_state_{version}_temp*"):  # TFF's unfinished write
                shutil.rmtree(partial, ignore_errors=True)
            raise CheckpointError(
                f"cannot write the checkpoint of round {version} to {self.directory}: {e}; "
                f"the last one written is round {self.saved_round}"
            ) from e

    def save_pending(self, through: int | None = None) -> int | None:
        """Write the latest completed round (if <= `through`) unless on disk already; return the latest on disk."""
        if self._pending is not None and (through is None or self._pending[1] <= through):
            run_sync(self._write())
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
        versions = run_sync(tff.program.FileProgramStateManager(str(self.checkpoints)).get_versions())
        return versions or []

    def record_start(self, config_yaml: str, run_id: str) -> None:
        """The config and MLflow run this directory's checkpoints belong to (written before round 1)."""
        atomic_write_text(self.checkpoints / "config.yaml", config_yaml)
        atomic_write_text(self.checkpoints / "mlflow_run.json", json.dumps({"run_id": run_id}))

    def config(self) -> dict[str, Any]:
        """The run's resolved config, flattened ("optimizer.learning_rate": 0.5); ConfigError if unreadable."""
        path = self.checkpoints / "config.yaml"
        try:
            return flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=True), sep=".")
        except Exception as e:  # missing, truncated or not YAML: OSError, yaml's and OmegaConf's errors
            raise ConfigError(
                f"{path}: unreadable ({type(e).__name__}: {e}); this run directory cannot be resumed"
            ) from e

    def run_id(self) -> str | None:
        """The MLflow run this directory's checkpoints belong to (None before it started); ConfigError if unreadable."""
        path = self.checkpoints / "mlflow_run.json"
        if not path.exists():
            return None
        try:
            run_id = json.loads(path.read_text())["run_id"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{path}: unreadable ({type(e).__name__}: {e}); this run directory cannot be resumed"
            ) from e
        return str(run_id)

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
                raise ConfigError(
                    f"{self.path} is being trained by another fedlm process (pid {f.read().strip()})"
                ) from None
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


def check_fresh(directory: RunDirectory) -> None:
    """A new run must not start in a directory holding another run's checkpoints (TFF would silently load them)."""
    if rounds := directory.rounds():
        raise ConfigError(
            f"hydra.run.dir={str(directory.path)!r} already holds checkpoints (rounds {rounds}) of MLflow run "
            f"{directory.run_id()}: continue it with resume={directory.path}, "
            "or choose another hydra.run.dir"
        )
