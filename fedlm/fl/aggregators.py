"""`aggregator=`: how the round's client updates are combined on the server (conf/aggregator/).

Each builder takes the option's keys and, at run time, whether the process is weighted and the clients per round;
it returns TFF's model-update aggregation factory (None: TFF's default mean)."""

from __future__ import annotations

from typing import Any, Optional

import tensorflow_federated as tff

Factory = Optional[tff.aggregators.AggregationFactory]


def mean(*, weighted: bool, clients_per_round: int) -> Factory:
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
) -> Factory:
    """User-level DP: adaptive clipping + Gaussian noise (tff.learning.dp_aggregator); unweighted only.

    The accounting keys (delta ... stop_at_epsilon) are the privacy ledger's (fedlm/fl/privacy.py, built by
    fedlm.experiment, which passes the noise multiplier calibrated to target_epsilon as `noise_multiplier`)."""
    if weighted:  # the option's check refuses this first, naming the keys to change
        raise ValueError("aggregator=dp is unweighted only: use client_weighting=uniform")
    return tff.learning.dp_aggregator(noise_multiplier, clients_per_round, zeroing=zeroing)


def compression(zeroing: bool, clipping: bool, *, weighted: bool, clients_per_round: int) -> Factory:
    """8-bit uniform quantization of large update tensors (tff.learning.compression_aggregator)."""
    return tff.learning.compression_aggregator(zeroing=zeroing, clipping=clipping, weighted=weighted)
