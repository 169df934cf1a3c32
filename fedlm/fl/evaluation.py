"""Evaluation of the server model on the eval clients' test splits: in a Keras model (the tutorial's) or with TFF's
federated evaluation; the same fixed, seeded eval clients either way."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedlm.data.preprocessing import clients_eval_dataset
from fedlm.model.metrics import compile_for_eval


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
