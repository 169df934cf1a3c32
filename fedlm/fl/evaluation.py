"""`eval=`: how the server model is evaluated on the eval clients' test splits (conf/eval/): in a Keras model (the
tutorial's) or with TFF's federated evaluation; the same fixed, seeded eval clients either way.

Each builder takes, at run time, the learning process, the model builders and the `EvalClients`; it returns an
`Evaluation`: a function of the server state and the data it evaluates on (what TFF's training loop calls). Both
also measure every eval client on its own (`PerClient`, under `PER_CLIENT` in the metrics: fedlm/fl/fairness.py
summarizes it), in the same pass over the data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedlm.data.preprocessing import clients_eval_dataset
from fedlm.fl.process import ModelFn
from fedlm.model.metrics import compile_for_eval
from fedlm.vocab import PAD_ID, VOCAB_SIZE

PER_CLIENT = "per_client"  # the metrics' key of the eval clients' own figures (a PerClient, not a number)


@dataclasses.dataclass(frozen=True)
class PerClient:
    """Each eval client's figures over its own test split: real target characters (padding and OOV excluded), the
    correctly predicted ones, and the summed cross-entropy (nats) over them."""

    client_ids: tuple[str, ...]
    tokens: np.ndarray
    correct: np.ndarray
    cross_entropy_sum: np.ndarray

    @property
    def accuracy(self) -> np.ndarray:
        return self.correct / np.maximum(self.tokens, 1)

    @property
    def loss(self) -> np.ndarray:
        """Cross-entropy in nats per real target character: eval/cross_entropy of the client alone."""
        return self.cross_entropy_sum / np.maximum(self.tokens, 1)


@dataclasses.dataclass(frozen=True)
class EvalClients:
    """The eval clients' test splits: a `ClientData`, which clients, and how their text becomes batches."""

    test_data: Any  # tff.simulation.datasets.ClientData
    client_ids: Sequence[str]
    seq_length: int
    batch_size: int


@dataclasses.dataclass(frozen=True)
class Evaluation:
    evaluate: Callable[[Any, Any], dict[str, float]]  # (server state, data) -> metrics
    data: Any  # what `evaluate` takes: one dataset (Keras) or a dataset per client (federated)
    datasets: list[tf.data.Dataset]  # the same data as a list, for counting what is evaluated
    client_ids: Sequence[str] = ()  # whose test splits they are (the run's eval dataset input)

    def num_sequences(self) -> int:
        """Sequences evaluated each time (reads the data once; Keras's is cached, so this warms its cache)."""
        return sum(1 for ds in self.datasets for _ in ds.unbatch())


def pick_eval_clients(client_ids: Sequence[str], num_clients: int, seed: int) -> list[str]:
    """A fixed, seeded set of clients whose test split is evaluated every time."""
    ids = sorted(client_ids)
    picked = np.random.default_rng(seed).choice(len(ids), min(num_clients, len(ids)), replace=False)
    return [ids[i] for i in sorted(picked)]


class PerClientEvaluation(tf.keras.Model):
    """`model`, evaluated as Keras evaluates it (the same compiled loss and metrics, one pass), on inputs
    `((ids, client), targets)`: each step also adds every sequence's real targets, correct predictions and
    cross-entropy to its client's row of `sums`."""

    def __init__(self, model: tf.keras.Model, num_clients: int):
        super().__init__()
        self.model = model
        self.sums = tf.Variable(tf.zeros([num_clients, 3]), trainable=False)  # tokens, correct, cross-entropy

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.model(inputs, training=training)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        (x, client), y = data
        logits = self.model(x, training=False)
        self.compute_loss(x, y, logits, None)
        y = tf.cast(y, tf.int32)
        mask = tf.cast(y < PAD_ID, tf.float32)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32) * mask
        labels = tf.minimum(y, VOCAB_SIZE - 1)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits) * mask
        rows = tf.stack([tf.reduce_sum(mask, 1), tf.reduce_sum(correct, 1), tf.reduce_sum(ce, 1)], axis=1)
        self.sums.scatter_nd_add(tf.expand_dims(client, 1), rows)
        return self.compute_metrics(x, y, logits, None)


def keras(
    *,
    process: tff.learning.templates.LearningProcess,
    model_fn: ModelFn,
    keras_model_fn: Callable[[], tf.keras.Model],
    clients: EvalClients,
) -> Evaluation:
    """The server weights pushed into a compiled Keras model, evaluated on all eval clients' test sequences
    concatenated (the tutorial's `keras_evaluate`); each client's own figures from the same pass."""
    inner = keras_model_fn()
    keras_model = compile_for_eval(PerClientEvaluation(inner, len(clients.client_ids)))
    dataset = clients_eval_dataset(
        clients.test_data, clients.client_ids, clients.seq_length, clients.batch_size, with_client_index=True
    )

    def evaluate(state: Any, data: tf.data.Dataset) -> dict[str, Any]:
        process.get_model_weights(state).assign_weights_to(inner)
        keras_model.sums.assign(tf.zeros_like(keras_model.sums))
        metrics = keras_model.evaluate(data, verbose=0, return_dict=True)
        tokens, correct, ce = keras_model.sums.numpy().T
        return metrics | {PER_CLIENT: PerClient(tuple(clients.client_ids), tokens, correct, ce)}

    return Evaluation(evaluate, dataset, [dataset], clients.client_ids)


def federated(
    *,
    process: tff.learning.templates.LearningProcess,
    model_fn: ModelFn,
    keras_model_fn: Callable[[], tf.keras.Model],
    clients: EvalClients,
) -> Evaluation:
    """TFF's federated evaluation (`build_fed_eval`'s parts): the server weights broadcast, each eval client
    evaluating them on its own test split with `build_fed_eval`'s local evaluation, its metrics' sums kept per
    client (the computation returns them placed at the clients, in the order of the datasets) and summed, then
    finalized, by TFF's `sum_then_finalize`, `build_fed_eval`'s metrics aggregation."""
    from tensorflow_federated.python.learning.algorithms import fed_eval

    weights_type = process.get_model_weights.type_signature.result
    with tf.Graph().as_default():
        model = model_fn()
        batch_type = tff.types.tensorflow_to_type(model.input_spec)
    finalizers = model.metric_finalizers()
    local_evaluation = fed_eval._build_local_evaluation(
        model_fn, weights_type, batch_type, tff.learning.LoopImplementation.DATASET_REDUCE
    )

    sum_then_finalize = tff.learning.metrics.sum_then_finalize(
        finalizers, local_evaluation.type_signature.result.local_outputs
    )

    @tff.federated_computation(
        tff.FederatedType(weights_type, tff.SERVER), tff.FederatedType(tff.SequenceType(batch_type), tff.CLIENTS)
    )
    def evaluate_clients(weights, datasets):
        outputs = tff.federated_map(local_evaluation, (tff.federated_broadcast(weights), datasets))
        return sum_then_finalize(outputs.local_outputs), outputs.local_outputs

    datasets = [
        clients_eval_dataset(clients.test_data, [cid], clients.seq_length, clients.batch_size)
        for cid in clients.client_ids
    ]

    def evaluate(state: Any, client_datasets: list[tf.data.Dataset]) -> dict[str, Any]:
        metrics, per_client = evaluate_clients(process.get_model_weights(state), client_datasets)
        metrics = {k: float(v) for k, v in metrics.items()}
        accuracy_total = np.array([c["accuracy"][0] for c in per_client], dtype=np.float64)
        cross_entropy = np.array([c["cross_entropy"] for c in per_client], dtype=np.float64)
        own = PerClient(tuple(clients.client_ids), cross_entropy[:, 1], accuracy_total, cross_entropy[:, 0])
        return metrics | {PER_CLIENT: own}

    return Evaluation(evaluate, datasets, datasets, clients.client_ids)
