"""The federated training loop: TFF's `run_training_process` with client sampling, evaluation and release managers."""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from fedlm.model import compile_for_eval
from fedlm.preprocessing import eval_dataset
from fedlm.runtime import check_interrupted


def build_client_selection(
    sampler: Callable[[int], list[str]],
    make_dataset: Callable[[str, int], tf.data.Dataset],
) -> Callable[[int], list[tf.data.Dataset]]:
    """Round -> the training datasets of the clients the sampler picks for that round."""

    def select(round_num: int) -> list[tf.data.Dataset]:
        check_interrupted()  # a round boundary: the place to stop on Ctrl-C / SIGTERM
        return [make_dataset(cid, round_num) for cid in sampler(round_num)]

    return select


def build_eval_data(test_data, num_clients: int, seed: int, seq_length: int, batch_size: int) -> tf.data.Dataset:
    """The test split of a fixed, seeded set of clients, as one large-batch dataset (the same every round)."""
    ids = sorted(test_data.client_ids)
    picked = np.random.default_rng(seed).choice(len(ids), min(num_clients, len(ids)), replace=False)
    return eval_dataset([test_data.create_tf_dataset_for_client(ids[i]) for i in sorted(picked)], seq_length, batch_size)


def build_keras_evaluation(
    process: tff.learning.templates.LearningProcess, keras_model: tf.keras.Model
) -> Callable[[Any, tf.data.Dataset], dict[str, float]]:
    """Push the server weights into a compiled Keras model and evaluate it (the tutorial's `keras_evaluate`)."""
    compile_for_eval(keras_model)

    def evaluate(state: Any, dataset: tf.data.Dataset) -> dict[str, float]:
        process.get_model_weights(state).assign_weights_to(keras_model)
        return keras_model.evaluate(dataset, verbose=0, return_dict=True)

    return evaluate


def train(
    process: Any,
    select_clients: Callable[[int], list[tf.data.Dataset]],
    rounds: int,
    evaluate: Callable[[Any, tf.data.Dataset], dict[str, float]],
    eval_data: tf.data.Dataset,
    eval_every: int,
    release_managers: Sequence[tff.program.ReleaseManager],
) -> Any:
    """Round 0 evaluates the starting model; eval every `eval_every` rounds and always after the last round."""
    state = tff.simulation.run_training_process(
        training_process=process,
        training_selection_fn=select_clients,
        total_rounds=rounds,
        evaluation_fn=evaluate,
        evaluation_selection_fn=lambda _: eval_data,
        rounds_per_evaluation=eval_every,
        metrics_managers=release_managers,
    )
    if rounds % eval_every:  # the loop evaluated only on multiples of eval_every
        metrics = {f"evaluation/{k}": v for k, v in evaluate(state, eval_data).items()}
        loop = asyncio.get_event_loop()
        loop.run_until_complete(asyncio.gather(*[m.release(metrics, key=rounds) for m in release_managers]))
    return state
