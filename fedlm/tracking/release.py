"""TFF release managers: where each round's metrics go (MLflow, the console) and the text samples of a run.

TFF's training loop hands every round's metrics to these (`tff.program.ReleaseManager`); step = round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import mlflow
import tensorflow_federated as tff

from fedlm.fl.loop import METRIC_NAMES
from fedlm.model.metrics import with_derived
from fedlm.tracking import names
from fedlm.utils import flatten

if TYPE_CHECKING:
    from fedlm.tracking.ledger import StoreWriter

SAMPLES_TABLE = "samples/samples.json"  # MLflow table of text samples during training
FINAL_SAMPLES_TABLE = "samples/final_samples.json"  # the last round's rows alone: one table to compare across runs
CLIENTS_FINAL = "eval/clients_final.json"  # the last evaluation's per-client figures


class MlflowReleaseManager(tff.program.ReleaseManager):
    """Logs each released round's metrics (plus perplexity and bits/char) to the active MLflow run, step = round,
    under MLflow's names (`eval_loss` as `eval/loss`: names.metric).

    `latest` holds the last value of each fedlm name (the run's final eval_loss, for sweepers). `already_logged`
    (MLflow metric -> steps, from `logged_steps`) is not logged again: a resumed run recomputes the rounds after its
    last checkpoint, and must not log their steps twice. With a `writer` (fedlm/tracking/ledger.py) the metrics are
    kept in the run directory until the store has them, and a store briefly unavailable does not stop the run.
    """

    def __init__(self, already_logged: Mapping[str, Collection[int]] | None = None, writer: StoreWriter | None = None):
        self.latest: dict[str, float] = {}
        self._skip = already_logged or {}
        self._writer = writer

    async def release(self, value: Mapping[str, Any], key: int) -> None:
        flat = flatten(value)
        metrics = with_derived({name: float(flat[k]) for k, name in METRIC_NAMES.items() if k in flat})
        self.latest.update(metrics)
        logged = {names.metric(name): v for name, v in metrics.items()}
        new = {name: v for name, v in logged.items() if int(key) not in self._skip.get(name, ())}
        if new and self._writer is not None:
            self._writer.log(int(key), new)
        elif new:
            mlflow.log_metrics(new, step=int(key))


class RoundOnceReleaseManager(tff.program.ReleaseManager):
    """Logs each released round's metrics once, step = round: a round released twice (training, then a final
    evaluation) is logged once, and a resumed run's steps already in the store (`already_logged` of `done_metric`)
    are not logged again. Through the run's `writer` (the ledger) if given, else straight to MLflow."""

    def __init__(
        self, done_metric: str, already_logged: Mapping[str, Collection[int]] | None, writer: StoreWriter | None
    ):
        self._done: set[int] = set((already_logged or {}).get(done_metric, ()))
        self._writer = writer

    def first_release(self, key: int) -> bool:
        """Whether round `key` is released for the first time (and so is to be logged); counts it as logged."""
        if key in self._done:
            return False
        self._done.add(key)
        return True

    def log(self, key: int, metrics: Mapping[str, float]) -> None:
        if self._writer is not None:
            self._writer.log(key, dict(metrics))
        else:
            mlflow.log_metrics(dict(metrics), step=key)


class PrivacyReleaseManager(RoundOnceReleaseManager):
    """aggregator=dp: logs `privacy_epsilon`, the epsilon its rounds so far have spent (the run's
    `fedlm.fl.privacy.Ledger`), step = round, from round 0 (nothing spent)."""

    def __init__(self, ledger: Any, already_logged: Mapping[str, Collection[int]] | None = None, writer=None):
        super().__init__(names.PRIVACY_EPSILON, already_logged, writer)
        self._ledger = ledger

    async def release(self, value: Any, key: int) -> None:
        if self.first_release(key := int(key)):
            self.log(key, {names.PRIVACY_EPSILON: self._ledger.epsilon(key)})


class CommunicationReleaseManager(RoundOnceReleaseManager):
    """Logs the communication ledger's bytes (fedlm/fl/communication.py) of every released round, step = round:
    `comm/down_bytes`, `comm/up_bytes` of the round and `comm/total_bytes` so far (0 at round 0). A function of the
    round, so a resumed run logs what an uninterrupted one would."""

    def __init__(self, ledger: Any, already_logged: Mapping[str, Collection[int]] | None = None, writer=None):
        super().__init__(names.COMM_TOTAL_BYTES, already_logged, writer)
        self._ledger = ledger

    async def release(self, value: Any, key: int) -> None:
        if self.first_release(key := int(key)):
            self.log(key, {names.metric(name): float(v) for name, v in self._ledger.metrics(key).items()})


class FairnessReleaseManager(RoundOnceReleaseManager):
    """Every evaluation's per-client figures (fedlm/fl/fairness.py) as metrics, step = round: quantiles of the eval
    clients' accuracy and loss, the worst 10%, and the clients sampled for training in rounds 1 … r (`sampled`:
    round -> their ids) against the others. Remembers the last evaluation (`latest`: round, its `PerClient`, the
    sampled ids) for the end-of-run histogram. A resumed run's logged steps are not logged again."""

    def __init__(
        self,
        sampled: Callable[[int], Collection[str]],
        already_logged: Mapping[str, Collection[int]] | None = None,
        writer: StoreWriter | None = None,
    ):
        super().__init__(names.metric("eval_client_accuracy_p50"), already_logged, writer)
        self._sampled = sampled
        self.latest: tuple[int, Any, Collection[str] | None] | None = None

    async def release(self, value: Mapping[str, Any], key: int) -> None:
        from fedlm.fl import fairness
        from fedlm.fl.evaluation import PER_CLIENT

        per_client = flatten(value).get(f"evaluation/{PER_CLIENT}")
        if per_client is None:
            return
        key = int(key)
        sampled = self._sampled(key) if key > 0 else None
        self.latest = (key, per_client, sampled)
        if not self.first_release(key):
            return
        summary = fairness.summarize(
            per_client.client_ids, per_client.accuracy, per_client.loss, per_client.tokens, sampled
        )
        self.log(key, {names.metric(name): v for name, v in summary.items()})

    def log_final(self, run_id: str) -> None:
        """The last evaluation's clients: a histogram of their accuracy (plots/client_accuracy.png) and their
        figures (eval/clients_final.json: id, accuracy, loss, real target characters, sampled so far)."""
        if self.latest is None:
            return
        from fedlm.tracking import plots

        key, per_client, sampled = self.latest
        flags = None if sampled is None else [c in sampled for c in per_client.client_ids]
        real = per_client.tokens > 0
        fig = plots.client_accuracy_figure(
            per_client.accuracy[real], None if flags is None else [f for f, r in zip(flags, real) if r], key
        )
        client = mlflow.MlflowClient()
        client.log_figure(run_id, fig, plots.CLIENT_ACCURACY_FIGURE)
        rows = {
            "client_id": list(per_client.client_ids),
            "accuracy": [float(a) for a in per_client.accuracy],
            "loss": [float(x) for x in per_client.loss],
            "tokens": [int(t) for t in per_client.tokens],
            "sampled": flags if flags is not None else [False] * len(per_client.client_ids),
        }
        client.log_dict(run_id, {"round": key, **rows}, CLIENTS_FINAL)


def logged_steps(run_id: str) -> dict[str, set[int]]:
    """MLflow metric name -> the steps the run already has."""
    client = mlflow.MlflowClient()
    return {
        key: {m.step for m in client.get_metric_history(run_id, key)} for key in client.get_run(run_id).data.metrics
    }


class ProgressReleaseManager(tff.program.ReleaseManager):
    """Prints one line per round: round/total, train and eval metrics, scheduled learning rates, seconds per round and
    ETA. The evaluation after a last round off the `eval_every` schedule comes as a second release of that round: its
    line says so and has no timing (the round's time was already given)."""

    def __init__(self, total_rounds: int):
        self._total = total_rounds
        self._t0: float | None = None
        self._k0 = 0
        self._last_key: int | None = None

    async def release(self, value: Mapping[str, Any], key: int) -> None:
        flat = flatten(value)
        parts = [f"round {key:>{len(str(self._total))}}/{self._total}"]
        for k, label in (
            ("client_work/train/loss", "train_loss"),
            ("client_work/train/accuracy", "train_acc"),
            ("evaluation/loss", "eval_loss"),
            ("evaluation/accuracy", "eval_acc"),
        ):
            if k in flat:
                parts.append(f"{label} {float(flat[k]):.4f}")
        for k, label in (("client_work/client_learning_rate", "client_lr"), ("finalizer/learning_rate", "server_lr")):
            if k in flat:  # scheduled (fedlm/fl/optimizers.py)
                parts.append(f"{label} {float(flat[k]):.4g}")
        if "participation/sampled" in flat:  # unreliable clients (fedlm/fl/participation.py)
            parts.append(
                f"clients {int(flat['participation/reporting'])}/{int(flat['participation/sampled'])} "
                f"({int(flat['participation/dropped'])} dropped, {int(flat['participation/stragglers'])} straggled)"
            )
            if int(flat["participation/reporting"]) == 0:
                parts.append("skipped: every sampled client dropped")
        if key == self._last_key:
            parts.append("(final evaluation)")
        elif self._t0 is None:  # timing starts at the first line (round 0, or the resumed round)
            self._t0, self._k0 = time.monotonic(), key
        elif key > self._k0:
            per_round = (time.monotonic() - self._t0) / (key - self._k0)
            parts.append(f"{per_round:.1f}s/round  ETA {per_round * (self._total - key):.0f}s")
        self._last_key = key
        print("  ".join(parts), flush=True)


class SampleReleaseManager(tff.program.ReleaseManager):
    """At round 0, every `every` rounds and the last round: text from fixed prompts with the current server
    weights, appended to an MLflow table (round, prompt, temperature, text); the last round's also to a table of
    its own, which MLflow's artifact evaluation view lines up across runs. The same seed every round, so the text
    changes only because the model does."""

    def __init__(
        self,
        current_weights: Callable[[], Any],
        prompts: Sequence[str],
        temperatures: Sequence[float],
        length: int,
        seed: int,
        every: int,
        total_rounds: int,
        done_rounds: Collection[int] = (),
        writer: StoreWriter | None = None,
    ):
        self._weights, self._prompts, self._temperatures = current_weights, list(prompts), list(temperatures)
        self._length, self._seed, self._every, self._total = length, seed, every, total_rounds
        self._generator = None
        self._done: set[int] = set(done_rounds)  # a resumed run's table already has them (`sampled_rounds`)
        self._writer = writer  # waits a briefly unavailable store out

    async def release(self, value: Any, key: int) -> None:
        key = int(key)
        if key in self._done or not self._prompts or (key % self._every and key != self._total):
            return
        self._done.add(key)  # the loop may release a round twice (training, then a final evaluation)
        import numpy as np

        from fedlm.model.generator import Generator

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
        table = {k: [r[k] for r in rows] for k in rows[0]}

        def log() -> None:
            mlflow.log_table(table, SAMPLES_TABLE)
            if key == self._total:
                mlflow.log_table(table, FINAL_SAMPLES_TABLE)

        if self._writer is not None:
            self._writer.call(log, f"round {key}'s text samples")
        else:
            log()


def sampled_rounds(run_id: str) -> set[int]:
    """The rounds a run's samples table already has."""
    client = mlflow.MlflowClient()
    folder = SAMPLES_TABLE.rpartition("/")[0]
    if SAMPLES_TABLE not in {f.path for f in client.list_artifacts(run_id, folder)}:
        return set()  # no table yet (and no warning from load_table about a run without one)
    # The run's own experiment: `mlflow.load_table` searches the *active* experiment (0 before a run is started),
    # finds nothing, and a resumed run then appends its recomputed rounds' samples again.
    experiment_id = client.get_run(run_id).info.experiment_id
    table = client.load_table(experiment_id, SAMPLES_TABLE, run_ids=[run_id])
    return {int(r) for r in table["round"]} if "round" in table else set()
