"""The federated training loop: TFF's `run_training_process` with client sampling, evaluation and release managers."""
from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedlm.model import compile_for_eval
from fedlm.preprocessing import clients_eval_dataset
from fedlm.runtime import RunFailed, check_interrupted
from fedlm.release import METRIC_NAMES
from fedlm.tracking import flatten

if TYPE_CHECKING:
    from fedlm.checkpoint import RoundCheckpoints


def build_client_selection(
    sampler: Callable[[int], list[str]],
    make_dataset: Callable[[str, int], tf.data.Dataset],
) -> Callable[[int], list[tf.data.Dataset]]:
    """Round -> the training datasets of the clients the sampler picks for that round."""

    def select(round_num: int) -> list[tf.data.Dataset]:
        check_interrupted()  # a round boundary: the place to stop on Ctrl-C / SIGTERM
        return [make_dataset(cid, round_num) for cid in sampler(round_num)]

    return select


def pick_eval_clients(client_ids: Sequence[str], num_clients: int, seed: int) -> list[str]:
    """A fixed, seeded set of clients whose test split is evaluated every time."""
    ids = sorted(client_ids)
    picked = np.random.default_rng(seed).choice(len(ids), min(num_clients, len(ids)), replace=False)
    return [ids[i] for i in sorted(picked)]


def build_eval_data(test_data, num_clients: int, seed: int, seq_length: int, batch_size: int) -> tf.data.Dataset:
    """The eval clients' test splits as one large-batch dataset (the same every round), for Keras evaluation."""
    ids = pick_eval_clients(test_data.client_ids, num_clients, seed)
    return clients_eval_dataset(test_data, ids, seq_length, batch_size)


def build_eval_client_data(test_data, num_clients: int, seed: int, seq_length: int,
                           batch_size: int) -> list[tf.data.Dataset]:
    """The same eval clients' test splits, one dataset per client, for federated evaluation."""
    ids = pick_eval_clients(test_data.client_ids, num_clients, seed)
    return [clients_eval_dataset(test_data, [cid], seq_length, batch_size) for cid in ids]


def build_keras_evaluation(
    process: tff.learning.templates.LearningProcess, keras_model: tf.keras.Model
) -> Callable[[Any, tf.data.Dataset], dict[str, float]]:
    """Push the server weights into a compiled Keras model and evaluate it (the tutorial's `keras_evaluate`)."""
    compile_for_eval(keras_model)

    def evaluate(state: Any, dataset: tf.data.Dataset) -> dict[str, float]:
        process.get_model_weights(state).assign_weights_to(keras_model)
        return keras_model.evaluate(dataset, verbose=0, return_dict=True)

    return evaluate


def build_federated_evaluation(
    process: tff.learning.templates.LearningProcess, model_fn: Callable[[], Any]
) -> Callable[[Any, list[tf.data.Dataset]], dict[str, float]]:
    """Server weights -> `tff.learning.algorithms.build_fed_eval` on client datasets; the round's summed metrics."""
    fed_eval = tff.learning.algorithms.build_fed_eval(model_fn)
    initial = fed_eval.initialize()

    def evaluate(state: Any, client_datasets: list[tf.data.Dataset]) -> dict[str, float]:
        eval_state = fed_eval.set_model_weights(initial, process.get_model_weights(state))
        metrics = fed_eval.next(eval_state, client_datasets).metrics["client_work"]["eval"]["current_round_metrics"]
        return {k: float(v) for k, v in metrics.items()}

    return evaluate


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
    """Stops the run when a round's metrics show divergence: train or eval loss NaN/Inf, or no training at all.

    TFF leaves a client whose update is NaN/Inf out of the average *and* out of the train metrics; when every
    sampled client diverged, the round reports train_batches 0 (and loss 0), never NaN. The metrics are already
    on the host: one check per round, no device-to-host sync per batch. Released before the round's checkpoint
    is kept; list it after the other release managers so the bad round is still logged and printed.
    """

    async def release(self, value: Mapping[str, Any], key: int) -> None:
        flat = flatten(value)
        for name in ("client_work/train/loss", "evaluation/loss"):
            if name in flat and not math.isfinite(float(flat[name])):
                raise Diverged(int(key), f"{METRIC_NAMES[name]} is {float(flat[name])}")
        if "client_work/train/num_batches" in flat and int(flat["client_work/train/num_batches"]) == 0:
            raise Diverged(int(key), "every sampled client's update was NaN/Inf "
                                     "(TFF left them all out: train_batches 0)")


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
    """
    state = tff.simulation.run_training_process(
        training_process=process,
        training_selection_fn=select_clients,
        total_rounds=rounds,
        evaluation_fn=evaluate,
        evaluation_selection_fn=lambda _: eval_data,
        rounds_per_evaluation=eval_every,
        program_state_manager=checkpoints,
        rounds_per_saving_program_state=1,  # RoundCheckpoints decides which rounds go to disk
        metrics_managers=release_managers,
    )
    if isinstance(process, LatestState):  # resumed with no round left to run: the loop never called `next`
        process.state = state
    if rounds % eval_every:  # the loop evaluated only on multiples of eval_every
        metrics = {f"evaluation/{k}": v for k, v in evaluate(state, eval_data).items()}
        loop = asyncio.get_event_loop()
        loop.run_until_complete(asyncio.gather(*[m.release(metrics, key=rounds) for m in release_managers]))
    checkpoints.save_pending()
    return state
