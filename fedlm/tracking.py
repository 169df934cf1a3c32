"""MLflow: where runs go, how a sweep groups them, and a TFF release manager that logs round metrics."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import mlflow
from mlflow.exceptions import MlflowException
import tensorflow_federated as tff

from fedlm.metrics import RANDOM_GUESS, with_derived

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_TABLE = "samples/samples.json"  # MLflow table of text samples during training

# TFF's metric names -> the names fedlm logs.
METRIC_NAMES = {
    "client_work/train/loss": "train_loss",
    "client_work/train/accuracy": "train_accuracy",
    "client_work/train/num_examples": "train_sequences",
    "client_work/train/num_batches": "train_batches",
    "client_work/train/cross_entropy": "train_cross_entropy",
    "client_work/train/oov_rate": "train_oov_rate",
    "client_work/train/num_tokens": "train_tokens",
    "client_work/train/num_clients": "train_clients",
    "training_time_in_seconds": "round_seconds",
    "evaluation/loss": "eval_loss",
    "evaluation/accuracy": "eval_accuracy",
    "evaluation/cross_entropy": "eval_cross_entropy",
    "evaluation/oov_rate": "eval_oov_rate",
    "evaluation/num_tokens": "eval_tokens",
    "evaluation/num_clients": "eval_clients",  # federated evaluation only
    "evaluation/evaluation_time_in_seconds": "eval_seconds",
}


def default_tracking_uri() -> str:
    """A sqlite store in the project root, absolute, so runs from any directory land in one place."""
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def flatten(tree: Mapping[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a/b": leaf} (TFF's metric paths; sep="." for config params)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, sep, key + sep))
        else:
            out[key] = v
    return out


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


def run_tags(overrides: list[str]) -> dict[str, str]:
    """One tag per command-line override (`override.optimizer` = `adam`), so the UI can filter and group by them."""
    tags = {"fedlm.overrides": " ".join(overrides), "fedlm.git_commit": git_commit()}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        tags[f"override.{key}"] = value
    return tags


def start_run(experiment_name: str, overrides: list[str], sweep_dir: str | None = None) -> mlflow.ActiveRun:
    """Start this job's run, named and tagged by its overrides; in a Hydra multirun, as a child of the sweep's
    parent run (fedlm/sweep.py), named by the overrides that vary across the sweep."""
    from fedlm import sweep

    experiment = get_or_create_experiment(experiment_name)
    tags, parent = run_tags(overrides), None
    if sweep_dir is not None:
        tags[sweep.SWEEP_DIR_TAG] = sweep_dir
        if parent := sweep.find_parent_run(experiment.experiment_id, sweep_dir):
            tags["mlflow.parentRunId"] = parent.info.run_id
    return mlflow.start_run(run_name=sweep.child_run_name(overrides, parent), tags=tags)


class MlflowReleaseManager(tff.program.ReleaseManager):
    """Logs each released round's metrics (plus perplexity and bits/char) to the active MLflow run, step = round.

    `latest` holds the last value of each name (the run's final eval_loss, for sweepers). `already_logged`
    (metric -> steps, from `logged_steps`) is not logged again: a resumed run recomputes the rounds after its
    last checkpoint, and must not log their steps twice.
    """

    def __init__(self, already_logged: Mapping[str, Collection[int]] | None = None):
        self.latest: dict[str, float] = {}
        self._skip = already_logged or {}

    async def release(self, value: Mapping[str, Any], key: int) -> None:
        flat = flatten(value)
        metrics = with_derived({name: float(flat[k]) for k, name in METRIC_NAMES.items() if k in flat})
        self.latest.update(metrics)
        new = {name: v for name, v in metrics.items() if int(key) not in self._skip.get(name, ())}
        if new:
            mlflow.log_metrics(new, step=int(key))


def logged_steps(run_id: str) -> dict[str, set[int]]:
    """Metric name -> the steps the run already has."""
    client = mlflow.MlflowClient()
    return {key: {m.step for m in client.get_metric_history(run_id, key)}
            for key in client.get_run(run_id).data.metrics}


class ProgressReleaseManager(tff.program.ReleaseManager):
    """Prints one line per round: round/total, train and eval metrics, seconds per round and ETA."""

    def __init__(self, total_rounds: int):
        self._total = total_rounds
        self._t0: float | None = None
        self._k0 = 0

    async def release(self, value: Mapping[str, Any], key: int) -> None:
        flat = flatten(value)
        parts = [f"round {key:>{len(str(self._total))}}/{self._total}"]
        for k, label in (("client_work/train/loss", "train_loss"), ("client_work/train/accuracy", "train_acc"),
                         ("evaluation/loss", "eval_loss"), ("evaluation/accuracy", "eval_acc")):
            if k in flat:
                parts.append(f"{label} {float(flat[k]):.4f}")
        if self._t0 is None:  # timing starts at the first line (round 0, or the resumed round)
            self._t0, self._k0 = time.monotonic(), key
        elif key > self._k0:
            per_round = (time.monotonic() - self._t0) / (key - self._k0)
            parts.append(f"{per_round:.1f}s/round  ETA {per_round * (self._total - key):.0f}s")
        print("  ".join(parts), flush=True)


class SampleReleaseManager(tff.program.ReleaseManager):
    """At round 0, every `every` rounds and the last round: text from fixed prompts with the current server
    weights, appended to an MLflow table (round, prompt, temperature, text). The same seed every round, so
    the text changes only because the model does."""

    def __init__(self, current_weights: Callable[[], Any], prompts: Sequence[str], temperatures: Sequence[float],
                 length: int, seed: int, every: int, total_rounds: int, artifact_file: str = SAMPLES_TABLE,
                 done_rounds: Collection[int] = ()):
        self._weights, self._prompts, self._temperatures = current_weights, list(prompts), list(temperatures)
        self._length, self._seed, self._every, self._total = length, seed, every, total_rounds
        self._artifact_file = artifact_file
        self._generator = None
        self._done: set[int] = set(done_rounds)  # a resumed run's table already has them (`sampled_rounds`)

    async def release(self, value: Any, key: int) -> None:
        key = int(key)
        if key in self._done or not self._prompts or (key % self._every and key != self._total):
            return
        self._done.add(key)  # the loop may release a round twice (training, then a final evaluation)
        import numpy as np

        from fedlm.generate import Generator

        weights = self._weights()
        if self._generator is None:
            self._generator = Generator(weights)
        else:
            self._generator.set_weights(weights)
        rows = []
        for prompt in self._prompts:
            for temperature in self._temperatures:
                rng = np.random.default_rng([self._seed, len(rows)])
                text = self._generator.sample(prompt, self._length, float(temperature), rng)
                rows.append({"round": key, "prompt": prompt, "temperature": float(temperature), "text": text})
        mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, self._artifact_file)


def sampled_rounds(run_id: str) -> set[int]:
    """The rounds a run's samples table already has."""
    try:
        table = mlflow.load_table(SAMPLES_TABLE, run_ids=[run_id])
    except MlflowException:  # no table yet
        return set()
    return {int(r) for r in table["round"]} if "round" in table else set()


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
