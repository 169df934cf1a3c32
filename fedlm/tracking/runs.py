"""A job's MLflow run: named and tagged by its overrides and, in a Hydra multirun, a child of the sweep's parent;
opened new or resumed with its config logged; ended early with the last round kept."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import mlflow
from omegaconf import DictConfig, OmegaConf

from fedlm.conf import schema
from fedlm.fl.checkpoint import CheckpointError, RoundCheckpoints, RunDirectory
from fedlm.fl.loop import Diverged
from fedlm.fl.runtime import Interrupted
from fedlm.tracking import names, store, sweep, tags
from fedlm.tracking.artifacts import LOGGED_MODEL_NAME
from fedlm.tracking.ledger import StoreWriter

# System metrics say "Started monitoring system metrics." and more at INFO, at every run's start and end, and warn
# or log an ERROR (with the store's SQL error: "Error terminating system metrics monitoring process") when the store
# is briefly unavailable: they are best-effort; round metrics go through the ledger (fedlm/tracking/ledger.py), which
# says once, in fedlm's own line, that the store is unavailable.
logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)


def run_tags(overrides: list[str]) -> dict[str, str]:
    """One tag per command-line override (`override.optimizer` = `adam`), so the UI can filter and group by them;
    values as Hydra read them (`sqlite:////x.db`, not the command line's `sqlite\\:////x.db`)."""
    run = {tags.OVERRIDES: " ".join(overrides), tags.GIT_COMMIT: store.git_commit()}
    for override in names.parse_overrides(overrides):
        run[f"{tags.OVERRIDE_PREFIX}{override.key}"] = override.text
    return run


def start_run(
    experiment_name: str, overrides: list[str], sweep_dir: str | None, choices: Mapping[str, Any], summary: str
) -> mlflow.ActiveRun:
    """Start this job's run, tagged by its overrides, with MLflow's system metrics (CPU, memory, every 10 s). Named
    `summary` (names.run_summary); in a Hydra multirun, a child of the sweep's parent run (fedlm/tracking/sweep.py)
    named by its values of the keys that vary across the sweep (names.child_name)."""
    experiment = store.get_or_create_experiment(experiment_name)
    run, name = run_tags(overrides), summary
    if sweep_dir is not None:
        run[tags.SWEEP_DIR] = sweep_dir
        if parent := sweep.find_parent_run(experiment.experiment_id, sweep_dir):
            run["mlflow.parentRunId"] = parent.info.run_id
            swept = parent.data.tags.get(tags.SWEPT_KEYS, "").split()
            name = names.child_name(overrides, swept, choices) or summary
    return mlflow.start_run(run_name=name, tags=run, log_system_metrics=True)


def eval_figures(run_id: str) -> tuple[int, dict[str, float], dict[str, float]] | None:
    """(last round, eval figures at round 0, at the last round) of a run, None before it has any."""
    client = mlflow.MlflowClient()
    history = {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k))
        for k in (names.EVAL_LOSS, names.EVAL_ACCURACY, names.EVAL_PERPLEXITY)
    }
    if not history[names.EVAL_LOSS]:
        return None
    last = history[names.EVAL_LOSS][-1][0]
    return (
        last,
        {k: dict(h)[min(dict(h))] for k, h in history.items() if h},
        {k: dict(h)[last] for k, h in history.items() if h and last in dict(h)},
    )


@contextlib.contextmanager
def open_run(
    cfg: DictConfig,
    choices: Mapping[str, Any],
    resume: Any,
    run_dir: RunDirectory,
    overrides: list[str],
    sweep_dir: str | None,
    metrics_manager: Any,
    extra_params: Mapping[str, Any] | None = None,
) -> Iterator[str]:
    """The job's MLflow run, with its config logged and its setup as its description: a new one (a sweep's child in
    a multirun) or, resuming, the interrupted one, whose logged params are kept and whose last metrics the final
    summary may need. Its id. Once the body is done, the description adds the eval figures at start and end.
    `extra_params` are logged with the config's, in place of a key's configured value (the privacy ledger's: the
    noise multiplier used, delta as a number)."""
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    flat = schema.flat_config(cfg)
    params = store.run_params(flat, choices) | dict(extra_params or {})
    if resume:
        # The run's own experiment made active: MLflow otherwise takes the experiment of calls without one (the
        # final model's metrics) from $MLFLOW_EXPERIMENT_ID -- which `mlflow.set_experiment` in any parent process
        # sets, possibly for another store -- or experiment 0.
        mlflow.set_experiment(experiment_id=mlflow.get_run(resume.run_id).info.experiment_id)
        active_run = mlflow.start_run(run_id=resume.run_id, log_system_metrics=True)
    else:
        summary = names.run_summary(choices, cfg.clients_per_round, overrides)
        active_run = start_run(cfg.mlflow.experiment_name, overrides, sweep_dir, choices, summary)
    with active_run as active:
        run_id = active.info.run_id
        setup = names.setup_line(cfg, choices)
        mlflow.set_tags(store.machine_tags(flat))
        if resume:
            print(
                f"resuming MLflow run {run_id} in {mlflow.get_tracking_uri()} after round {resume.round} "
                f"(checkpoints in {run_dir.checkpoints})",
                flush=True,
            )
            previous = active.data.tags.get(tags.RESUMED_AFTER_ROUNDS)
            mlflow.set_tag(tags.RESUMED_AFTER_ROUNDS, ",".join(filter(None, [previous, str(resume.round)])))
            logged = active.data.params  # a run killed before logging them gets them now; never changed
            store.log_config({k: v for k, v in params.items() if k not in logged}, config_yaml)
            # the final eval may be from before the stop
            metrics_manager.latest.update({names.fedlm_metric(k): v for k, v in active.data.metrics.items()})
        else:
            print(f"MLflow run {run_id} in {mlflow.get_tracking_uri()}", flush=True)
            mlflow.set_tag(tags.RUN_DIR, str(run_dir.path))
            mlflow.set_tag(tags.DESCRIPTION, names.run_description(active.info.run_name, setup, overrides))
            run_dir.record_start(config_yaml, run_id)
            store.log_config(params, config_yaml)
            store.log_random_guess()
        yield run_id
        if figures := eval_figures(run_id):
            last, start, end = figures
            name = mlflow.get_run(run_id).info.run_name
            # By run id: the ledger's writer has ended the active run by now, and a fluent call would start another.
            mlflow.MlflowClient().set_tag(
                run_id,
                tags.DESCRIPTION,
                names.run_description(name, setup, overrides, start, end, last, f"runs:/{run_id}/{LOGGED_MODEL_NAME}"),
            )


def end_early(
    checkpoints: RoundCheckpoints,
    error: BaseException,
    run_id: str,
    run_dir: RunDirectory,
    overrides: list[str],
    writer: StoreWriter,
) -> None:
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
        print(
            f"fedlm: {why}could not mark MLflow run {run_id} {status}: its store {writer.uri} is unavailable "
            f"({writer.reason}), so it shows RUNNING{unlogged}; {kept}",
            file=sys.stderr,
            flush=True,
        )
    if resumable:
        again = " ".join(o for o in overrides if not o.startswith("resume="))
        first = " (it logs those metrics first)" if unlogged else ""
        print(
            f"fedlm: continue it with: python -m fedlm.run {again} resume={run_dir.path}{first}",
            file=sys.stderr,
            flush=True,
        )
