"""The pieces every learning process shares: TFF's `model_fn` over the Keras char-RNN, the client loop, and starting
the process from given weights. The options that make a process are their own modules: client weighting
(weighting.py), aggregators (aggregators.py), algorithms (algorithms.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

from fedlm.model.metrics import MaskedAccuracy, MaskedCrossEntropy, NumClients, NumTokens, text_metrics

ModelFn = Callable[[], tff.learning.models.VariableModel]


def build_model_fn(keras_model_fn: Callable[[], tf.keras.Model], seq_length: int) -> ModelFn:
    """`model_fn` for TFF: a fresh Keras model wrapped inside the graph TFF controls."""
    spec = (tf.TensorSpec([None, seq_length], tf.int32), tf.TensorSpec([None, seq_length], tf.int32))

    def model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            keras_model_fn(),
            loss=MaskedCrossEntropy(),
            input_spec=spec,
            metrics=[MaskedAccuracy(), NumTokens(), *text_metrics(), NumClients()],
        )

    return model_fn


# The client's local loop as a graph while-loop over a dataset iterator, not TFF's default `dataset.reduce`: the
# same training, but in TFF's worker `reduce` runs the train step as a separate function call per batch
# (measured on 2 cores: rounds ~25% faster for the default model; README, "Speed").
CLIENT_LOOP = tff.learning.LoopImplementation.DATASET_ITERATOR


@dataclasses.dataclass
class StartFrom:
    """The learning process, initialized from given weights (the tutorial's `state_with_new_model_weights`)."""

    process: tff.learning.templates.LearningProcess
    initial_weights: tff.learning.models.ModelWeights

    def initialize(self) -> Any:
        return self.process.set_model_weights(self.process.initialize(), self.initial_weights)

    @property
    def next(self):
        return self.process.next
