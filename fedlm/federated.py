"""TFF federated averaging built from the Keras model and the configured optimizers and weighting."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import tensorflow as tf
import tensorflow_federated as tff

from fedlm.config import CLIENT_WEIGHTINGS
from fedlm.model import MaskedAccuracy, MaskedCrossEntropy


def build_model_fn(keras_model_fn: Callable[[], tf.keras.Model], seq_length: int) -> Callable[[], Any]:
    """`model_fn` for TFF: a fresh Keras model wrapped inside the graph TFF controls."""
    spec = (tf.TensorSpec([None, seq_length], tf.int32), tf.TensorSpec([None, seq_length], tf.int32))

    def model_fn():
        return tff.learning.models.from_keras_model(
            keras_model_fn(), loss=MaskedCrossEntropy(), input_spec=spec, metrics=[MaskedAccuracy()]
        )

    return model_fn


def build_fed_avg(
    model_fn: Callable[[], Any],
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
    client_weighting: str,
) -> tff.learning.templates.LearningProcess:
    """Weighted (by examples) or unweighted (uniform) federated averaging."""
    if client_weighting == "uniform":
        return tff.learning.algorithms.build_unweighted_fed_avg(model_fn, client_optimizer, server_optimizer)
    if client_weighting == "num_examples":
        return tff.learning.algorithms.build_weighted_fed_avg(
            model_fn, client_optimizer, server_optimizer, client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES
        )
    raise ValueError(f"client_weighting={client_weighting!r}; allowed: {list(CLIENT_WEIGHTINGS)}")


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
