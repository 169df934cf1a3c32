"""The federated training loop: TFF's `run_training_process` with client sampling, evaluation and release managers."""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedlm.errors import RunFailed
from fedlm.fl import runtime
from fedlm.fl.runtime import check_interrupted
from fedlm.model.metrics import LARGEST_EXP_ARGUMENT
from fedlm.utils import flatten, run_sync

if TYPE_CHECKING:
    from fedlm.fl.checkpoint import RoundCheckpoints

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
    "client_work/client_learning_rate": "client_learning_rate",  # with a client schedule (fedlm/fl/optimizers.py)
    "finalizer/learning_rate": "server_learning_rate",  # with a server schedule
    "training_time_in_seconds": "round_seconds",
    "participation/sampled": "train_clients_sampled",  # with unreliable participation= (ParticipationRounds)
    "participation/dropped": "train_clients_dropped",
    "participation/reporting": "train_clients_reporting",
    "participation/stragglers": "train_clients_straggled",
    "evaluation/loss": "eval_loss",
    "evaluation/accuracy": "eval_accuracy",
    "evaluation/cross_entropy": "eval_cross_entropy",
    "evaluation/oov_rate": "eval_oov_rate",
    "evaluation/num_tokens": "eval_tokens",
    "evaluation/num_clients": "eval_clients",  # federated evaluation only
    "evaluation/evaluation_time_in_seconds": "eval_seconds",
}


def build_client_selection(
    sampler: Callable[[int], list[str]],
    make_dataset: Callable[[str, int], tf.data.Dataset],
) -> Callable[[int], list[tf.data.Dataset]]:
    """Round -> the training datasets of the clients the sampler picks for that round."""

    def select(round_num: int) -> list[tf.data.Dataset]:
        check_interrupted()  # a round boundary: the place to stop on Ctrl-C / SIGTERM
        return [make_dataset(cid, round_num) for cid in sampler(round_num)]

    return select


class ParticipationRounds:
    """The started learning process, training in each round the reporting clients of `participation=`
    (fedlm/fl/participation.py), the stragglers on their share of batches; each round's metrics also count the
    clients sampled, dropped, reporting and straggling (`participation/...`).

    A round in which every sampled client dropped is skipped: TFF is not called (a mean over no clients has no
    value), the server state stays as it was, and the round logs its counts (reporting 0) and no train metrics.
    The learning-rate schedules count the rounds TFF trained, so a skipped round does not advance them.
    `select` (TFF's loop calls it right before `next`, for the same round) remembers the round's participation."""

    def __init__(
        self,
        process: Any,
        participation: Callable[[int], Any],
        make_dataset: Callable[[str, int], tf.data.Dataset],
    ):
        self.process = process
        self._participation = participation
        self._make = make_dataset
        self._round: Any = None

    def initialize(self) -> Any:
        return self.process.initialize()

    def select(self, round_num: int) -> list[tf.data.Dataset]:
        check_interrupted()  # a round boundary: the place to stop on Ctrl-C / SIGTERM
        self._round = round_ = self._participation(round_num)
        datasets = []
        for client in round_.reporting:
            dataset = self._make(client, round_num)
            if client in round_.stragglers:  # the first batches of its (seeded) order: what a deadline allows
                available = int(dataset.reduce(np.int64(0), lambda n, _: n + 1))
                dataset = dataset.take(round_.batches(client, available))
            datasets.append(dataset)
        return datasets

    def next(self, state: Any, client_data: Any) -> Any:
        counts = collections.OrderedDict(self._round.metrics())
        if not client_data:
            return tff.learning.templates.LearningProcessOutput(state, collections.OrderedDict(participation=counts))
        output = self.process.next(state, client_data)
        return output._replace(metrics=collections.OrderedDict(output.metrics, participation=counts))


class LatestState:
    """The learning process, remembering the last server state it produced (for release managers that look at
    the model itself, e.g. text samples: TFF's training loop releases only metrics)."""

    def __init__(self, process: Any):
        self.process = process
        self.state: Any = None

    def initialize(self) -> Any:
        self.state = self.process.initialize()
        return self.state

    def next(self, state: Any, client_data: Any) -> Any:
        output = self.process.next(state, client_data)
        self.state = output.state
        return output


class Diverged(RunFailed):
    """Training diverged at `round_num`: a loss or the server state became NaN/Inf."""

    def __init__(self, round_num: int, what: str):
        super().__init__(f"training diverged at round {round_num}: {what} (learning rate too high?)")
        self.round_num = round_num


class DivergenceCheck(tff.program.ReleaseManager):
    """Stops the run when a round's metrics show divergence: a train or eval loss (or cross-entropy) NaN, Inf or so
    large that its perplexity is Inf (above ~709.8 nats a character, where a uniform guess is 4.45), or no training
    at all.

    TFF leaves a client whose update is NaN/Inf out of the average *and* out of the train metrics; when every
    sampled client diverged, the round reports train_batches 0 (and loss 0), never NaN. The metrics are already
    on the host: one check per round, no device-to-host sync per batch. Released before the round's checkpoint
    is kept; `train` releases to it first, so its verdict is the round's error even if another manager fails on
    the same numbers (they all still run: the bad round is logged and printed).
    """

    async def release(self, value: Mapping[str, Any], key: int) -> None:
        flat = flatten(value)
        for split in ("client_work/train", "evaluation"):
            for name in (f"{split}/loss", f"{split}/cross_entropy"):
                nats = float(flat.get(name, 0.0))
                if not math.isfinite(nats):
                    raise Diverged(int(key), f"{METRIC_NAMES[name]} is {nats}")
                if nats > LARGEST_EXP_ARGUMENT:
                    raise Diverged(int(key), f"{METRIC_NAMES[name]} is {nats:.6g}, its perplexity inf")
        if "client_work/train/num_batches" in flat and int(flat["client_work/train/num_batches"]) == 0:
            raise Diverged(
                int(key), "every sampled client's update was NaN/Inf (TFF left them all out: train_batches 0)"
            )


def check_finite_state(state: Any, round_num: int) -> None:
    """Raise `Diverged` if the server state (weights, optimizer slots) holds NaN/Inf, e.g. a server learning rate
    that overflows. The state is already host numpy arrays: cheap, once per round, before it can be saved."""
    for leaf in tf.nest.flatten(state):
        array = np.asarray(leaf)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise Diverged(round_num, "the server model state has NaN/Inf values")


def train(
    process: Any,
    select_clients: Callable[[int], list[tf.data.Dataset]],
    rounds: int,
    evaluate: Callable[[Any, Any], dict[str, float]],
    eval_data: Any,
    eval_every: int,
    release_managers: Sequence[tff.program.ReleaseManager],
    checkpoints: RoundCheckpoints,
) -> Any:
    """Round 0 evaluates the starting model; eval every `eval_every` rounds and always after the last round.

    With `checkpoints` (a `checkpoint.RoundCheckpoints`), TFF's loop resumes from the latest saved round and
    hands it every round's state; the final state is written when the loop ends.

    Once the last round is trained, a stop request no longer cuts the run short (`runtime.finishing`).
    """
    current_round = 0

    def select(round_num: int) -> list[tf.data.Dataset]:
        nonlocal current_round
        datasets = select_clients(round_num)
        current_round = round_num
        return datasets

    class LastRoundFinishes:  # TFF's loop calls `next` right after `select` for the same round
        @staticmethod
        def initialize() -> Any:
            with runtime.watchdog("initializing the server state"):
                return process.initialize()

        @staticmethod
        def next(state: Any, client_data: Any) -> Any:
            with runtime.watchdog(f"round {current_round}"):
                output = process.next(state, client_data)
            if current_round == rounds:
                runtime.finishing()
            return output

    def watched_evaluate(state: Any, data: Any) -> dict[str, float]:
        with runtime.watchdog(f"the evaluation after round {current_round}"):
            return evaluate(state, data)

    # The first manager to fail gives the round's error (asyncio.gather): the divergence check, if it fails.
    managers = sorted(release_managers, key=lambda m: not isinstance(m, DivergenceCheck))
    state = tff.simulation.run_training_process(
        training_process=LastRoundFinishes(),
        training_selection_fn=select,
        total_rounds=rounds,
        evaluation_fn=watched_evaluate,
        evaluation_selection_fn=lambda _: eval_data,
        rounds_per_evaluation=eval_every,
        program_state_manager=checkpoints,
        rounds_per_saving_program_state=1,  # RoundCheckpoints decides which rounds go to disk
        metrics_managers=managers,
    )
    runtime.finishing()  # also when resumed with no round left to run
    if isinstance(process, LatestState):  # resumed with no round left to run: the loop never called `next`
        process.state = state
    if rounds % eval_every:  # the loop evaluated only on multiples of eval_every
        metrics = {f"evaluation/{k}": v for k, v in watched_evaluate(state, eval_data).items()}
        run_sync(asyncio.gather(*[m.release(metrics, key=rounds) for m in managers]))
    checkpoints.save_pending()
    return state
