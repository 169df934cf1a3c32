"""`client_weighting=`: how much each client's update counts in the round's average (conf/client_weighting/).

Each builder takes the run's `model_fn` and returns the `model_fn` the process trains with and TFF's weighting
(None: unweighted, every client the same)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import tensorflow as tf
import tensorflow_federated as tff

from fedlm.fl.process import ModelFn
from fedlm.model.metrics import real_target_count


class ClientWeighting(NamedTuple):
    model_fn: ModelFn
    weighting: Optional[tff.learning.ClientWeighting]  # None: unweighted (TFF's unweighted FedAvg)


def num_examples(*, model_fn: ModelFn) -> ClientWeighting:
    """TFF's default: a client counts by its sequences (padded ones fully)."""
    return ClientWeighting(model_fn, tff.learning.ClientWeighting.NUM_EXAMPLES)


def uniform(*, model_fn: ModelFn) -> ClientWeighting:
    """Every client the same weight."""
    return ClientWeighting(model_fn, None)


def num_tokens(*, model_fn: ModelFn) -> ClientWeighting:
    """A client counts by its real (unpadded, in-vocabulary) target characters."""
    return ClientWeighting(lambda: TokenWeightedModel(model_fn()), tff.learning.ClientWeighting.NUM_EXAMPLES)


class TokenWeightedModel(tff.learning.models.VariableModel):
    """A TFF model whose batches count their real target characters as their number of examples.

    TFF 0.87's client work weights a client by the sum of `forward_pass(...).num_examples` (it accepts no
    custom weighting function), so counting tokens there makes `ClientWeighting.NUM_EXAMPLES` weight clients
    by their unpadded, in-vocabulary characters. Everything else is the wrapped model's.
    """

    def __init__(self, model: tff.learning.models.VariableModel):
        self._model = model

    @property
    def trainable_variables(self):
        return self._model.trainable_variables

    @property
    def non_trainable_variables(self):
        return self._model.non_trainable_variables

    @property
    def local_variables(self):
        return self._model.local_variables

    @property
    def input_spec(self):
        return self._model.input_spec

    @tf.function
    def forward_pass(self, batch_input, training=True):
        output = self._model.forward_pass(batch_input, training=training)
        return output._replace(num_examples=real_target_count(batch_input[1]))  # BatchOutput is a namedtuple

    @tf.function
    def predict_on_batch(self, x, training=True):
        return self._model.predict_on_batch(x, training=training)

    def report_local_unfinalized_metrics(self):
        return self._model.report_local_unfinalized_metrics()

    def metric_finalizers(self):
        return self._model.metric_finalizers()

    def reset_metrics(self) -> None:
        self._model.reset_metrics()
