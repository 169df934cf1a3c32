"""The federated learning process: TFF's FedAvg or FedProx over the Keras model, with the configured client
weighting, model-update aggregator and client/server optimizers."""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

import tensorflow as tf
import tensorflow_federated as tff
from omegaconf import DictConfig

from fedlm.conf.schema import AggregatorName, AlgorithmName, ClientWeighting
from fedlm.model.metrics import (MaskedAccuracy, MaskedCrossEntropy, NumClients, NumTokens, real_target_count,
                                text_metrics)

ModelFn = Callable[[], tff.learning.models.VariableModel]


def build_model_fn(keras_model_fn: Callable[[], tf.keras.Model], seq_length: int) -> ModelFn:
    """`model_fn` for TFF: a fresh Keras model wrapped inside the graph TFF controls."""
    spec = (tf.TensorSpec([None, seq_length], tf.int32), tf.TensorSpec([None, seq_length], tf.int32))

    def model_fn() -> tff.learning.models.VariableModel:
        return tff.learning.models.from_keras_model(
            keras_model_fn(), loss=MaskedCrossEntropy(), input_spec=spec,
            metrics=[MaskedAccuracy(), NumTokens(), *text_metrics(), NumClients()],
        )

    return model_fn


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


class ProximalOptimizer(tff.learning.optimizers.Optimizer):
    """FedProx's client step: the wrapped optimizer applied to `grad + mu * (w - w_start)`.

    `w_start` is the server model the client started from: TFF initializes the client optimizer's state at
    the start of every client update, so the weights seen by the first `next` are exactly the server's.
    Why not `tff.learning.algorithms.build_weighted_fed_prox`: TFF 0.87 adds `mu * (w_start - w)`, the
    wrong sign, which pushes clients away from the server model (tests/test_federated.py shows it).
    """

    def __init__(self, inner: tff.learning.optimizers.Optimizer, proximal_strength: float):
        self._inner, self._mu = inner, proximal_strength

    def initialize(self, specs: Any) -> collections.OrderedDict:
        return collections.OrderedDict(
            inner=self._inner.initialize(specs),
            anchor=tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), specs),
            anchored=tf.constant(False),
        )

    def next(self, state, weights, gradients):
        anchor = tf.nest.map_structure(lambda a, w: tf.where(state["anchored"], a, w), state["anchor"], weights)
        gradients = tf.nest.map_structure(
            lambda g, w, a: tf.convert_to_tensor(g) + self._mu * (w - a), gradients, weights, anchor
        )
        inner, weights = self._inner.next(state["inner"], weights, gradients)
        return collections.OrderedDict(inner=inner, anchor=anchor, anchored=tf.constant(True)), weights

    def get_hparams(self, state):
        return self._inner.get_hparams(state["inner"])

    def set_hparams(self, state, hparams):
        return collections.OrderedDict(state, inner=self._inner.set_hparams(state["inner"], hparams))


def build_aggregator(cfg: DictConfig, weighted: bool, clients_per_round: int) -> Any:
    """The model-update aggregation factory for `aggregator=<name>`; None is TFF's default mean."""
    name = cfg.name
    if name == AggregatorName.mean:
        return None
    if name == AggregatorName.dp:
        if weighted:  # config.validate rejects this first, with the keys to change
            raise ValueError("aggregator=dp is unweighted only: use client_weighting=uniform")
        return tff.learning.dp_aggregator(cfg.noise_multiplier, clients_per_round, zeroing=cfg.zeroing)
    if name == AggregatorName.compression:
        return tff.learning.compression_aggregator(zeroing=cfg.zeroing, clipping=cfg.clipping, weighted=weighted)
    raise ValueError(f"aggregator={name!r}: allowed {[a.value for a in AggregatorName]}")


# The client's local loop as a graph while-loop over a dataset iterator, not TFF's default `dataset.reduce`: the
# same training, but in TFF's worker `reduce` runs the train step as a separate function call per batch
# (measured on 2 cores: rounds ~25% faster for the default model; README, "Speed").
CLIENT_LOOP = tff.learning.LoopImplementation.DATASET_ITERATOR


def build_learning_process(
    model_fn: ModelFn,
    client_optimizer: tff.learning.optimizers.Optimizer,
    server_optimizer: tff.learning.optimizers.Optimizer,
    client_weighting: ClientWeighting,
    algorithm: DictConfig,
    aggregator: DictConfig,
    clients_per_round: int,
) -> tff.learning.templates.LearningProcess:
    """FedAvg, or FedProx (FedAvg with a proximal client step), weighted by examples or tokens, or unweighted."""
    weighted = client_weighting != ClientWeighting.uniform
    if client_weighting == ClientWeighting.num_tokens:
        example_weighted_fn = model_fn

        def model_fn() -> tff.learning.models.VariableModel:
            return TokenWeightedModel(example_weighted_fn())
    kwargs: dict[str, Any] = dict(
        client_optimizer_fn=client_optimizer,
        server_optimizer_fn=server_optimizer,
        model_aggregator=build_aggregator(aggregator, weighted, clients_per_round),
        loop_implementation=CLIENT_LOOP,
    )
    if weighted:
        kwargs["client_weighting"] = tff.learning.ClientWeighting.NUM_EXAMPLES
    if algorithm.name == AlgorithmName.fedprox:
        kwargs["client_optimizer_fn"] = ProximalOptimizer(client_optimizer, algorithm.proximal_strength)
    elif algorithm.name != AlgorithmName.fedavg:
        raise ValueError(f"algorithm={algorithm.name!r}: allowed {[a.value for a in AlgorithmName]}")
    build = tff.learning.algorithms.build_weighted_fed_avg if weighted else tff.learning.algorithms.build_unweighted_fed_avg
    return build(model_fn, **kwargs)


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
