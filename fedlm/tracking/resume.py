"""Which run a `resume=` continues: found by directory, MLflow run id or (`resume=true`) the latest unfinished run of
the experiment with the same config; checked before any work (fedlm/fl/checkpoint.py holds the checkpoints)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from fedlm.conf.schema import flat_config
from fedlm.errors import ConfigError
from fedlm.fl.checkpoint import RunDirectory
from fedlm.tracking import tags

# Keys a resumed run may change: they do not change what the finished rounds computed (where files go, speed, what the
# report measures against: runs started before that key existed resume too).
MUTABLE_KEYS = (
    "rounds",
    "report.target_accuracy",
    "resume",
    "checkpoint_every",
    "checkpoint_keep",
    "cache_dir",
    "data.download_dir",
    "mlflow.tracking_uri",
    "mlflow.store_retry_seconds",
    "runtime.max_concurrent_clients",
    # where the rounds run, not what they compute: a run stopped by a dead worker goes on with it restarted, others,
    # or the local worker
    "runtime.workers",
    "runtime.subrounds",
    "runtime.round_timeout_s",
    "runtime.private_local_worker",
)
# Keys only configs from before options became structured configs with a `_target_` (fedlm 9972261 and older) have.
OLD_LAYOUT_KEYS = ("aggregator.name", "algorithm.name", "sampling.name", "data.name", "eval.mode")


def check_same_layout(value: str, directory: RunDirectory, saved: Mapping[str, Any]) -> None:
    """Refuse a run started by a fedlm whose config had other keys: its options were enums, not structured configs,
    and resuming it under new names could silently change what the remaining rounds compute."""
    if old := [k for k in OLD_LAYOUT_KEYS if k in saved]:
        raise ConfigError(
            f"resume={value}: {directory.path} was started by an older fedlm whose config has {', '.join(old)} "
            "(options chosen by name, before each option became its own structured config); this version cannot "
            "continue it with the same meaning. Finish it with that version (`git checkout 9972261`), or start it "
            "again"
        )


# Keys added to the config after runs were started without them, with the value such a run had in effect: a run
# saved without the key resumes when the key has that value now (the defaults, for every one of these).
KEYS_ADDED = {
    "partition._target_": "fedlm.data.partitions.role",  # one client per (play, role): the only split there was
    "partition._partial_": True,
    "model.cell": "gru",
    "model.layers": 1,
    "model.lstm": "fast",
    "pretrain.seed": 0,  # the starting model only builds the process: a resumed run continues its checkpoint
    **{  # every sampled client reporting with all its batches: the only participation there was
        f"participation.{key}": value
        for key, value in (
            ("_target_", "fedlm.fl.participation.reliable"),
            ("_partial_", True),
            ("dropout", 0.0),
            ("over_select", 0),
            ("straggler_fraction", 0.0),
            ("straggler_work", 1.0),
        )
    },
    **{  # the optimizers' own learning rates every round: the only schedule there was
        f"{group}.{key}": value
        for group in ("schedule", "server_schedule")
        for key, value in (("_target_", "fedlm.fl.schedules.constant"), ("_partial_", True), ("warmup_rounds", 0))
    },
}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: saved -> current' for every key that differs, except MUTABLE_KEYS (and KEYS_ADDED at their value)."""
    saved = {**{k: v for k, v in KEYS_ADDED.items() if k not in saved and k in current}, **saved}
    keys = sorted((set(saved) | set(current)) - set(MUTABLE_KEYS))
    missing = "<absent>"
    return [
        f"{k}: {saved.get(k, missing)!r} -> {current.get(k, missing)!r}"
        for k in keys
        if saved.get(k, missing) != current.get(k, missing)
    ]


@dataclasses.dataclass(frozen=True)
class Resume:
    run_id: str
    directory: RunDirectory
    round: int  # the latest checkpoint: training continues with the round after it


@dataclasses.dataclass(frozen=True)
class Finished:
    """`resume=true` in a multirun, for a job whose run already finished all its rounds: skipped."""

    run_id: str
    run_name: str
    eval_loss: float  # its final one: what a sweeper minimizes


def find_finished_run(cfg: Any) -> Finished | None:
    """The latest FINISHED run of experiment `mlflow.experiment_name` with this config and all its rounds done."""
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment_name)
    if experiment is None:
        return None
    current = flat_config(cfg)
    for run in mlflow.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    ):
        directory = RunDirectory(run.data.tags.get(tags.RUN_DIR, "/nonexistent"))
        try:
            saved = directory.config() if directory.rounds() else None
        except ConfigError:
            continue
        if saved is not None and saved.get("rounds") == cfg.rounds and not config_differences(saved, current):
            return Finished(run.info.run_id, run.info.run_name, float(run.data.metrics.get("eval/loss", float("nan"))))
    return None


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
            raise ConfigError(
                f"resume={value!r}: its MLflow run {run_id} is not in {mlflow.get_tracking_uri()}; "
                "set mlflow.tracking_uri to the store the run was logged to"
            ) from e
    elif re.fullmatch(r"[0-9a-f]{32}", value):
        try:
            run = client.get_run(value)
        except MlflowException as e:
            raise ConfigError(f"resume={value!r}: no such MLflow run in {mlflow.get_tracking_uri()}") from e
        if tags.RUN_DIR not in run.data.tags:
            raise ConfigError(
                f"resume={value!r}: the run has no {tags.RUN_DIR} tag (not started by a fedlm that writes checkpoints)"
            )
        directory = RunDirectory(run.data.tags[tags.RUN_DIR])
    else:
        raise ConfigError(
            f"resume={value!r}: neither an existing directory nor an MLflow run id (32 hex digits); "
            "allowed: true, false, a run directory, an MLflow run id"
        )
    rounds = directory.rounds()
    if not rounds:
        raise ConfigError(
            f"resume={value!r}: no checkpoint in {directory.checkpoints} (the run stopped before "
            "saving its start, or the directory was moved); start it again without resume"
        )
    if directory.in_use():
        raise ConfigError(f"resume={value!r}: {directory.path} is being trained by another fedlm process")
    saved = directory.config()
    check_same_layout(repr(value), directory, saved)
    if diff := config_differences(saved, current):
        raise ConfigError(
            f"resume={value!r}: the config differs from the run's in {', '.join(diff)}; "
            f"only {', '.join(MUTABLE_KEYS)} may change when resuming"
        )
    _check_rounds(shown, rounds[-1], int(cfg.rounds), run.info.status == "FINISHED")
    return Resume(run.info.run_id, directory, rounds[-1])


def _latest_matching_unfinished(experiment_name: str, current: Mapping[str, Any], total_rounds: int) -> Resume:
    where = f"experiment {experiment_name!r} of {mlflow.get_tracking_uri()}"
    experiment = mlflow.get_experiment_by_name(experiment_name)
    runs = (
        []
        if experiment is None
        else mlflow.search_runs(
            [experiment.experiment_id],
            filter_string="attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )
    )
    closest = None
    for run in runs:
        directory = RunDirectory(run.data.tags.get(tags.RUN_DIR, "/nonexistent"))
        rounds = directory.rounds()
        if not rounds or directory.in_use():
            continue
        try:
            saved = directory.config()
        except ConfigError as e:  # one broken run directory must not stop the search for the matching one
            print(f"fedlm: resume=true skips run {run.info.run_id}: {e}", flush=True)
            continue
        if any(k in saved for k in OLD_LAYOUT_KEYS):
            continue  # resume=true looks for runs of this config: an older layout's never is one
        diff = config_differences(saved, current)
        if not diff:
            _check_rounds("true", rounds[-1], total_rounds, finished=False)
            return Resume(run.info.run_id, directory, rounds[-1])
        closest = closest or (run.info.run_id, directory.path, diff)
    message = f"resume=true: no unfinished run with this config and a checkpoint in {where}"
    if closest:
        run_id, path, diff = closest
        message += (
            f"; the latest unfinished one, {run_id} in {path}, differs in {', '.join(diff)} "
            f"(only {', '.join(MUTABLE_KEYS)} may change when resuming)"
        )
    raise ConfigError(message)


def _check_rounds(value: str, saved: int, total: int, finished: bool) -> None:
    if saved > total:
        raise ConfigError(
            f"resume={value}: the run's last checkpoint is round {saved}, beyond rounds={total}; set rounds >= {saved}"
        )
    if finished and saved == total:
        raise ConfigError(
            f"resume={value}: the run already finished its {total} rounds; set rounds > {total} to train it further"
        )
