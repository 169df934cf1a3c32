"""`algorithm=`: the federated learning process (conf/algorithm/).

Each builder takes the option's keys and, at run time, the client weighting (fedlm/fl/weighting.py), the client
optimizer with its schedule and the server optimizer (fedlm/fl/optimizers.py) and the aggregation factory
(fedlm/fl/aggregators.py); it returns TFF's learning process."""

from __future__ import annotations

import collections
from typing import Any

import tensorflow as tf
import tensorflow_federated as tff

from fedlm.fl.optimizers import ClientOptimizer, Optimizer
from fedlm.fl.process import CLIENT_LOOP
from fedlm.fl.weighting import ClientWeighting


def fedavg(
    *, weighting: ClientWeighting, client_optimizer: ClientOptimizer, server_optimizer: Optimizer, aggregator: Any
) -> tff.learning.templates.LearningProcess:
    """Federated averaging (McMahan et al. 2017): TFF's weighted or unweighted FedAvg; with a client schedule, TFF's
    FedAvg with a client optimizer schedule."""
    if client_optimizer.scheduled:
        return _scheduled_fedavg(weighting, client_optimizer, server_optimizer, aggregator)
    kwargs: dict[str, Any] = {
        "client_optimizer_fn": client_optimizer.optimizer,
        "server_optimizer_fn": server_optimizer,
        "model_aggregator": aggregator,
        "loop_implementation": CLIENT_LOOP,
    }
    if weighting.weighting is None:
        return tff.learning.algorithms.build_unweighted_fed_avg(weighting.model_fn, **kwargs)
    return tff.learning.algorithms.build_weighted_fed_avg(
        weighting.model_fn, client_weighting=weighting.weighting, **kwargs
    )


def _scheduled_fedavg(
    weighting: ClientWeighting, client_optimizer: ClientOptimizer, server_optimizer: Optimizer, aggregator: Any
) -> tff.learning.templates.LearningProcess:
    """TFF's `build_weighted_fed_avg_with_optimizer_schedule`. It weights clients by `num_examples` only: the
    model's count, so `num_tokens` (whose model counts tokens there) is what it is; an unweighted aggregator
    (`uniform`, TFF's unweighted mean or DP) is made to take the weights and ignore them, as TFF's own
    `build_unweighted_fed_avg` does."""
    if weighting.weighting is None:
        unweighted = aggregator if aggregator is not None else tff.aggregators.UnweightedMeanFactory()
        aggregator = tff.aggregators.as_weighted_aggregator(unweighted)
    elif weighting.weighting != tff.learning.ClientWeighting.NUM_EXAMPLES:  # fedlm's weightings all are
        raise ValueError(f"a client schedule weights clients by their examples only, not {weighting.weighting}")
    return tff.learning.algorithms.build_weighted_fed_avg_with_optimizer_schedule(
        weighting.model_fn,
        client_learning_rate_fn=client_optimizer.learning_rate_fn,
        client_optimizer_fn=client_optimizer.at,
        server_optimizer_fn=server_optimizer,
        model_aggregator=aggregator,
        loop_implementation=CLIENT_LOOP,
    )


def fedprox(
    proximal_strength: float,
    *,
    weighting: ClientWeighting,
    client_optimizer: ClientOptimizer,
    server_optimizer: Optimizer,
    aggregator: Any,
) -> tff.learning.templates.LearningProcess:
    """FedProx (Li et al. 2020): FedAvg whose client step adds the proximal gradient (ProximalOptimizer)."""
    return fedavg(
        weighting=weighting,
        client_optimizer=client_optimizer.with_optimizer(lambda o: ProximalOptimizer(o, proximal_strength)),
        server_optimizer=server_optimizer,
        aggregator=aggregator,
    )


class ProximalOptimizer(Optimizer):
    """FedProx's client step: the wrapped optimizer applied to `grad + mu * (w - w_start)`.

    `w_start` is the server model the client started from: TFF initializes the client optimizer's state at
    the start of every client update, so the weights seen by the first `next` are exactly the server's.
    Why not `tff.learning.algorithms.build_weighted_fed_prox`: TFF 0.87 adds `mu * (w_start - w)`, the
    wrong sign, which pushes clients away from the server model (tests/fl/test_process_options.py shows it).
    """

    def __init__(self, inner: Optimizer, proximal_strength: float):
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
