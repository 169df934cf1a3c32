"""Which clients train in each round. Every sampler is a pure function of (seed, round): reruns and resumed runs
draw the same clients, and no sampler state needs saving."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow_federated as tff

from fedlm.conf.schema import SamplingName

ClientSampler = Callable[[int], list[str]]  # round number -> client ids


def client_shuffle_seed(seed: int, round_num: int) -> int:
    """The op seed that shuffles every client's batches in round `round_num`: a function of (seed, round), like
    the samplers, so reruns and resumed runs shuffle alike (a prime stride keeps seeds apart across rounds)."""
    return seed * 100_003 + round_num


def build_client_sampler(
    name: SamplingName,
    client_ids: Sequence[str],
    clients_per_round: int,
    seed: int,
    fixed_clients: Sequence[str] | None = None,
    client_sizes: Mapping[str, int] | None = None,
) -> ClientSampler:
    """A round -> client ids function for `sampling=<name>` (see conf/sampling/)."""
    ids = sorted(client_ids)  # independent of the order the dataset lists them in
    if name in (SamplingName.uniform, SamplingName.with_replacement):
        sample = tff.simulation.build_uniform_sampling_fn(
            ids, replace=name == SamplingName.with_replacement, random_seed=seed
        )
        return lambda round_num: sample(round_num, clients_per_round)
    if name == SamplingName.fixed:
        fixed = list(fixed_clients or [])
        return lambda round_num: list(fixed)
    if name == SamplingName.size_weighted:
        if client_sizes is None:
            raise ValueError("sampling=size_weighted needs the clients' sizes")
        sizes = np.array([client_sizes[c] for c in ids], dtype=np.float64)
        probabilities = sizes / sizes.sum()

        def size_weighted(round_num: int) -> list[str]:
            rng = np.random.default_rng([seed, round_num])
            return [ids[i] for i in rng.choice(len(ids), clients_per_round, replace=False, p=probabilities)]

        return size_weighted
    raise ValueError(f"sampling={name!r}: allowed {[s.value for s in SamplingName]}")
