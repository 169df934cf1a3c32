"""`aggregator=`: how the round's client updates are combined on the server (conf/aggregator/).

Each builder takes the option's keys and, at run time, whether the process is weighted, the clients per round and
the run's seed; it returns TFF's model-update aggregation factory (None: TFF's default mean)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any, Optional

import tensorflow as tf
import tensorflow_federated as tff
import tensorflow_privacy as tfp
from tensorflow_federated.python.learning import model_update_aggregator

Factory = Optional[tff.aggregators.AggregationFactory]


def mean(*, weighted: bool, clients_per_round: int, seed: int) -> Factory:
    """TFF's default: the (weighted or unweighted) mean of the updates."""
    return None


def dp(
    noise_multiplier: float,
    zeroing: bool,
    delta: float | None,
    accountant: Any,
    poisson_approximation: bool,
    target_epsilon: float | None,
    stop_at_epsilon: bool,
    *,
    weighted: bool,
    clients_per_round: int,
    seed: int,
) -> Factory:
    """User-level DP: adaptive clipping + Gaussian noise, as tff.learning.dp_aggregator builds it (its adaptive
    zeroing too), with the noise seeded by `seed` and the round (`SeededNoiseQuery`): a DP run reproduces, and a
    resumed one continues with the noise an uninterrupted run would have drawn. Unweighted only.

    The accounting keys (delta ... stop_at_epsilon) are the privacy ledger's (fedlm/fl/privacy.py, built by
    fedlm.experiment, which passes the noise multiplier calibrated to target_epsilon as `noise_multiplier`)."""
    if weighted:  # the option's check refuses this first, naming the keys to change
        raise ValueError("aggregator=dp is unweighted only: use client_weighting=uniform")
    adaptive = tff.aggregators.DifferentiallyPrivateFactory.gaussian_adaptive(noise_multiplier, clients_per_round)
    factory = tff.aggregators.DifferentiallyPrivateFactory(SeededNoiseQuery(adaptive._query, seed))
    return model_update_aggregator._default_zeroing(factory) if zeroing else factory  # dp_aggregator's own


def compression(zeroing: bool, clipping: bool, *, weighted: bool, clients_per_round: int, seed: int) -> Factory:
    """8-bit uniform quantization of large update tensors (tff.learning.compression_aggregator)."""
    return tff.learning.compression_aggregator(zeroing=zeroing, clipping=clipping, weighted=weighted)


class SeededNoiseQuery(tfp.SumAggregationDPQuery):
    """A DP query whose Gaussian noise is a function of (seed, round): `query`'s, drawn with stateless ops.

    tf_privacy's Gaussian queries draw with `tf.random_normal_initializer` and no seed: TFF's graphs have no graph
    seed, so every run draws other noise, and a resumed run's process starts a fresh random stream. Here the query's
    state carries the key [seed, round - 1] (saved with the server state in every checkpoint); while `query`'s
    noising is traced, its draws become `tf.random.stateless_normal` under that key, folded with the draw's place in
    the trace (the clipped sum's tensors, then the clipped count). Simulation only: noise that someone knowing `seed`
    can recompute protects nothing against them.
    """

    def __init__(self, query: tfp.SumAggregationDPQuery, seed: int):
        self._query = query
        self._seed = int(seed)

    def initial_global_state(self):
        return self._query.initial_global_state(), tf.constant([self._seed, 0], tf.int64)

    def derive_sample_params(self, global_state):
        return self._query.derive_sample_params(global_state[0])

    def initial_sample_state(self, template=None):
        return self._query.initial_sample_state(template)

    def preprocess_record(self, params, record):
        return self._query.preprocess_record(params, record)

    def get_noised_result(self, sample_state, global_state):
        query_state, key = global_state
        with stateless_gaussian_draws(key):
            result, new_query_state, event = self._query.get_noised_result(sample_state, query_state)
        return result, (new_query_state, key + tf.constant([0, 1], tf.int64)), event

    def derive_metrics(self, global_state):
        return self._query.derive_metrics(global_state[0])


@contextlib.contextmanager
def stateless_gaussian_draws(key: tf.Tensor) -> Iterator[None]:
    """While tracing: `tf.random_normal_initializer(...)(shape)`, tf_privacy's Gaussian draw, as
    `tf.random.stateless_normal` under `key` folded with the draw's number in the trace."""
    draws = itertools.count()
    stock = tf.random_normal_initializer

    class StatelessNormal:
        def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: Any = None):
            self.mean, self.stddev = mean, stddev

        def __call__(self, shape: Any, dtype: Any = tf.float32, **_: Any) -> tf.Tensor:
            seed = tf.random.experimental.stateless_fold_in(key, next(draws))
            return tf.random.stateless_normal(shape, seed, mean=self.mean, stddev=self.stddev, dtype=dtype)

    tf.random_normal_initializer = StatelessNormal
    try:
        yield
    finally:
        tf.random_normal_initializer = stock
