"""MLflow's store: where runs go (the tracking URI and its default), experiments, params and the config file.
No TensorFlow here: `fedlm.run` checks the store before importing it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow.exceptions import MlflowException

from fedlm.conf import preflight
from fedlm.errors import ConfigError
from fedlm.vocab import RANDOM_GUESS

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def default_tracking_uri() -> str:
    """A sqlite store in the project root, absolute, so runs from any directory land in one place."""
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite store go beside the .db file (not ./mlruns of whatever directory we run in)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return None  # a tracking server decides


def get_or_create_experiment(name: str):
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        try:
            mlflow.create_experiment(name, artifact_location=_artifact_location(mlflow.get_tracking_uri()))
        except MlflowException:  # a parallel job created it first
            pass
    return mlflow.set_experiment(name)


def log_random_guess() -> None:
    """The random-guess reference, logged once and printed as the tutorial prints it."""
    mlflow.log_metrics(RANDOM_GUESS)
    print(f"Expected accuracy for random guessing: {RANDOM_GUESS['random_guess_accuracy']:.3f} (perplexity "
          f"{RANDOM_GUESS['random_guess_perplexity']:.0f}, {RANDOM_GUESS['random_guess_bits_per_char']:.2f} "
          f"bits/char)", flush=True)


def log_config(cfg_flat: Mapping[str, Any], yaml_text: str) -> None:
    """Params: the flattened resolved config (MLflow's 500-chars limit per value)."""
    mlflow.log_params({k: str(v)[:500] for k, v in cfg_flat.items()})
    mlflow.log_text(yaml_text, "config.yaml")


def tracking_uri_or_default(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def connect(uri: str | None, experiment_name: str) -> str:
    """Use `mlflow.tracking_uri` (or $MLFLOW_TRACKING_URI, or the default store) in this process, checked first:
    results need somewhere to go before any work starts (preflight.check_tracking_store), and a deleted experiment
    of that name would refuse them. The URI."""
    uri = tracking_uri_or_default(uri)
    preflight.check_tracking_store(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.MlflowClient().get_experiment_by_name(experiment_name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"mlflow.experiment_name={experiment_name!r}: that experiment is deleted in {uri}; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`, with MLFLOW_TRACKING_URI "
            "set to the store) or choose another name"
        )
    return uri
