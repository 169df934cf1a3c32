"""`eval=`: how the server model is evaluated on the eval clients' test splits (conf/eval/): in a Keras model (the
tutorial's) or with TFF's federated evaluation; the same fixed, seeded eval clients either way.

Each builder takes, at run time, the learning process, the model builders and the `EvalClients`; it returns an
`Evaluation`: a function of the server state and the data it evaluates on (what TFF's training loop calls)."""

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


def keras(
    *,
    process: tff.learning.templates.LearningProcess,
    model_fn: ModelFn,
    keras_model_fn: Callable[[], tf.keras.Model],
    clients: EvalClients,
) -> Evaluation:
    """The server weights pushed into a compiled Keras model, evaluated on all eval clients' test sequences
    concatenated (the tutorial's `keras_evaluate`)."""
    keras_model = compile_for_eval(keras_model_fn())
    dataset = clients_eval_dataset(clients.test_data, clients.client_ids, clients.seq_length, clients.batch_size)

    def evaluate(state: Any, data: tf.data.Dataset) -> dict[str, float]:
        process.get_model_weights(state).assign_weights_to(keras_model)
        return keras_model.evaluate(data, verbose=0, return_dict=True)

    return Evaluation(evaluate, dataset, [dataset], clients.client_ids)


def federated(
    *,
    process: tff.learning.templates.LearningProcess,
    model_fn: ModelFn,
    keras_model_fn: Callable[[], tf.keras.Model],
    clients: EvalClients,
) -> Evaluation:
    """`tff.learning.algorithms.build_fed_eval`: each eval client evaluates the server model on its own test split;
    the metrics are TFF's sums over the clients."""
    fed_eval = tff.learning.algorithms.build_fed_eval(model_fn)
    initial = fed_eval.initialize()
    datasets = [
        clients_eval_dataset(clients.test_data, [cid], clients.seq_length, clients.batch_size)
        for cid in clients.client_ids
    ]

    def evaluate(state: Any, client_datasets: list[tf.data.Dataset]) -> dict[str, float]:
        eval_state = fed_eval.set_model_weights(initial, process.get_model_weights(state))
        metrics = fed_eval.next(eval_state, client_datasets).metrics["client_work"]["eval"]["current_round_metrics"]
        return {k: float(v) for k, v in metrics.items()}

    return Evaluation(evaluate, datasets, datasets, clients.client_ids)
