"""A job's MLflow run: named and tagged by its overrides and, in a Hydra multirun, a child of the sweep's parent."""
from __future__ import annotations

import mlflow

from fedlm.tracking import store, sweep, tags


def run_tags(overrides: list[str]) -> dict[str, str]:
    """One tag per command-line override (`override.optimizer` = `adam`), so the UI can filter and group by them."""
    run = {tags.OVERRIDES: " ".join(overrides), tags.GIT_COMMIT: store.git_commit()}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        run[f"{tags.OVERRIDE_PREFIX}{key}"] = value
    return run


def start_run(experiment_name: str, overrides: list[str], sweep_dir: str | None = None) -> mlflow.ActiveRun:
    """Start this job's run, named and tagged by its overrides; in a Hydra multirun, as a child of the sweep's
    parent run (fedlm/sweep.py), named by the overrides that vary across the sweep."""
    experiment = store.get_or_create_experiment(experiment_name)
    run, parent = run_tags(overrides), None
    if sweep_dir is not None:
        run[tags.SWEEP_DIR] = sweep_dir
        if parent := sweep.find_parent_run(experiment.experiment_id, sweep_dir):
            run["mlflow.parentRunId"] = parent.info.run_id
    return mlflow.start_run(run_name=sweep.child_run_name(overrides, parent), tags=run)
