"""A job's MLflow run: named and tagged by its overrides and, in a Hydra multirun, a child of the sweep's parent;
opened new or resumed with its config logged; ended early with the last round kept."""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, Mapping

import mlflow
from omegaconf import DictConfig, OmegaConf

from fedlm.conf import schema
from fedlm.fl.checkpoint import CheckpointError, RoundCheckpoints, RunDirectory
from fedlm.fl.loop import Diverged
from fedlm.fl.runtime import Interrupted
from fedlm.tracking import store, sweep, tags
from fedlm.tracking.ledger import StoreWriter


def run_tags(overrides: list[str]) -> dict[str, str]:
    """One tag per command-line override (`override.optimizer` = `adam`), so the UI can filter and group by them."""
    run = {tags.OVERRIDES: " ".join(overrides), tags.GIT_COMMIT: store.git_commit()}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        run[f"{tags.OVERRIDE_PREFIX}{key}"] = value
    return run


def start_run(experiment_name: str, overrides: list[str], sweep_dir: str | None = None) -> mlflow.ActiveRun:
    """Start this job's run, named and tagged by its overrides; in a Hydra multirun, as a child of the sweep's
    parent run (fedlm/tracking/sweep.py), named by the overrides that vary across the sweep."""
    experiment = store.get_or_create_experiment(experiment_name)
    run, parent = run_tags(overrides), None
    if sweep_dir is not None:
        run[tags.SWEEP_DIR] = sweep_dir
        if parent := sweep.find_parent_run(experiment.experiment_id, sweep_dir):
            run["mlflow.parentRunId"] = parent.info.run_id
    return mlflow.start_run(run_name=sweep.child_run_name(overrides, parent), tags=run)


def run_params(config_flat: Mapping[str, Any], choices: Mapping[str, Any]) -> dict[str, Any]:
    """A run's params: the option chosen in every group (`optimizer=adam`, readable and searchable as
    `params.optimizer = 'adam'`) and the keys of the chosen options and the rest of the config -- not how options
    are built (`_target_`, `_partial_`), which `config.yaml` keeps."""
    params = {group: choice for group, choice in choices.items() if not group.startswith("hydra/") and choice}
    params |= {k: v for k, v in config_flat.items() if k.rsplit(".", 1)[-1] not in schema.BUILD_KEYS}
    return params


@contextlib.contextmanager
def open_run(cfg: DictConfig, choices: Mapping[str, Any], resume: Any, run_dir: RunDirectory, overrides: list[str],
             sweep_dir: str | None, metrics_manager: Any) -> Iterator[str]:
    """The job's MLflow run, with its config logged: a new one (a sweep's child in a multirun) or, resuming, the
    interrupted one, whose logged params are kept and whose last metrics the final summary may need. Its id."""
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    params = run_params(schema.flat_config(cfg), choices)
    if resume:
        active_run = mlflow.start_run(run_id=resume.run_id)
    else:
        active_run = start_run(cfg.mlflow.experiment_name, overrides, sweep_dir)
    with active_run as active:
        run_id = active.info.run_id
        if resume:
            print(f"resuming MLflow run {run_id} in {mlflow.get_tracking_uri()} after round {resume.round} "
                  f"(checkpoints in {run_dir.checkpoints})", flush=True)
            previous = active.data.tags.get(tags.RESUMED_AFTER_ROUNDS)
            mlflow.set_tag(tags.RESUMED_AFTER_ROUNDS, ",".join(filter(None, [previous, str(resume.round)])))
            logged = active.data.params  # a run killed before logging them gets them now; never changed
            store.log_config({k: v for k, v in params.items() if k not in logged}, config_yaml)
            metrics_manager.latest.update(active.data.metrics)  # the final eval may be from before the stop
        else:
            print(f"MLflow run {run_id} in {mlflow.get_tracking_uri()}", flush=True)
            mlflow.set_tag(tags.RUN_DIR, str(run_dir.path))
            run_dir.record_start(config_yaml, run_id)
            store.log_config(params, config_yaml)
            store.log_random_guess()
        yield run_id


def end_early(checkpoints: RoundCheckpoints, error: BaseException, run_id: str, run_dir: RunDirectory,
              overrides: list[str], writer: StoreWriter) -> None:
    """The run stops early: write its last completed round (a diverged one never), mark the run, say how to go on.
    The status is reported as the store has it: a store that is unavailable keeps showing RUNNING."""
    through = error.round_num - 1 if isinstance(error, Diverged) else None
    if isinstance(error, CheckpointError):  # writing it is what failed: the error says so, once
        saved = checkpoints.saved_round
    else:
        try:
            saved = checkpoints.save_pending(through)
        except Exception as save_error:  # e.g. disk full: report, but do not hide the error that stopped the run
            print(f"fedlm: could not write the last round's checkpoint: {save_error}", file=sys.stderr)
            saved = checkpoints.saved_round
    interrupted = isinstance(error, Interrupted)
    status = "KILLED" if interrupted else "FAILED"
    why = f"stopped by {error.signal_name}; " if interrupted else ""
    kept = f"last checkpoint: round {saved} in {checkpoints.directory}" if saved is not None else "no checkpoint"
    resumable = saved is not None and through is None  # resuming a diverged run would diverge again
    marked = writer.finish(status, wait=False)  # the metrics the store lacks, then the status: one try each
    unlogged = writer.pending_note()
    unlogged = f"; {unlogged}, not yet in the store" if unlogged else ""
    if marked:
        print(f"fedlm: {why}MLflow run {run_id} marked {status}{unlogged}; {kept}", file=sys.stderr, flush=True)
    else:
        print(f"fedlm: {why}could not mark MLflow run {run_id} {status}: its store {writer.uri} is unavailable "
              f"({writer.reason}), so it shows RUNNING{unlogged}; {kept}", file=sys.stderr, flush=True)
    if resumable:
        again = " ".join(o for o in overrides if not o.startswith("resume="))
        first = " (it logs those metrics first)" if unlogged else ""
        print(f"fedlm: continue it with: python -m fedlm.run {again} resume={run_dir.path}{first}",
              file=sys.stderr, flush=True)
