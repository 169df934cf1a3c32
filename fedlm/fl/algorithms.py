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


def _as_weighted(aggregator: Any) -> Any:
    """An unweighted aggregation factory (None: TFF's unweighted mean) made to take client weights and ignore them,
    as TFF's own unweighted builders do: how FedSGD, which always weights, averages with client_weighting=uniform."""
    return tff.aggregators.as_weighted_aggregator(
        aggregator if aggregator is not None else tff.aggregators.UnweightedMeanFactory()
    )


def fedsgd(
    *, weighting: ClientWeighting, client_optimizer: ClientOptimizer, server_optimizer: Optimizer, aggregator: Any
) -> tff.learning.templates.LearningProcess:
    """FedSGD (McMahan et al. 2017): TFF's `build_fed_sgd`. A client's update is its mean gradient at the server
    model over its round's batches (each batch's loss gradient weighted by its examples: sequences, or real target
    characters with `num_tokens`), weighted by that count (or uniformly); the server optimizer steps along the
    weighted mean. There is no client optimizer: the option's check refuses a client schedule."""
    if client_optimizer.scheduled:  # the option's check refuses this first, naming the keys to change
        raise ValueError("algorithm=fedsgd has no client optimizer to schedule")
    return tff.learning.algorithms.build_fed_sgd(
        weighting.model_fn,
        server_optimizer_fn=server_optimizer,
        model_aggregator=_as_weighted(aggregator) if weighting.weighting is None else aggregator,
        loop_implementation=CLIENT_LOOP,
    )


def mime_lite(
    *, weighting: ClientWeighting, client_optimizer: ClientOptimizer, server_optimizer: Optimizer, aggregator: Any
) -> tff.learning.templates.LearningProcess:
    """MimeLite (Karimireddy et al. 2021): TFF's `build_weighted_mime_lite` / `build_unweighted_mime_lite`, or with a
    client schedule `build_mime_lite_with_optimizer_schedule` (whose rounds set the rate in the shared optimizer
    state). `aggregator` aggregates both what the clients send: the model update and the full-batch gradient (so
    compression compresses both; DP is refused by the option's check, since it would protect only the update)."""
    if weighting.weighting is None and client_optimizer.scheduled:  # TFF's scheduled MimeLite is weighted only
        client_weighting, update = tff.learning.ClientWeighting.UNIFORM, _as_weighted(aggregator)
        gradient = update
    elif weighting.weighting is None:
        return tff.learning.algorithms.build_unweighted_mime_lite(
            weighting.model_fn,
            base_optimizer=client_optimizer.optimizer,
            server_optimizer=server_optimizer,
            model_aggregator=aggregator,
            full_gradient_aggregator=aggregator,
            loop_implementation=CLIENT_LOOP,
        )
    else:
        client_weighting, update, gradient = weighting.weighting, aggregator, aggregator
    kwargs: dict[str, Any] = {
        "base_optimizer": client_optimizer.optimizer,
        "server_optimizer": server_optimizer,
        "client_weighting": client_weighting,
        "model_aggregator": update,
        "full_gradient_aggregator": gradient,
        "loop_implementation": CLIENT_LOOP,
    }
    if client_optimizer.scheduled:
        return tff.learning.algorithms.build_mime_lite_with_optimizer_schedule(
            weighting.model_fn, learning_rate_fn=client_optimizer.learning_rate_fn, **kwargs
        )
    return tff.learning.algorithms.build_weighted_mime_lite(weighting.model_fn, **kwargs)


class MimeLiteClientRate:
    """A started MimeLite process with a client schedule, whose rounds report the client's learning rate as
    `client_work/client_learning_rate` (TFF's scheduled FedAvg reports it itself; its scheduled MimeLite does not):
    read from the state the round starts from, where TFF keeps it in the optimizer state the clients share
    (client_work = (rounds so far, (optimizer state, gradient aggregator state)))."""

    def __init__(self, process: Any):
        self.process = process

    def initialize(self) -> Any:
        return self.process.initialize()

    def next(self, state: Any, client_data: Any) -> Any:
        rate = float(state.client_work[1][0][tff.learning.optimizers.LEARNING_RATE_KEY])
        output = self.process.next(state, client_data)
        metrics = collections.OrderedDict(output.metrics)
        metrics["client_work"] = collections.OrderedDict(metrics["client_work"], client_learning_rate=rate)
        return output._replace(metrics=metrics)
