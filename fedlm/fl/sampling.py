"""`sampling=`: which clients train in each round (conf/sampling/). Every sampler is a pure function of (seed,
round): reruns and resumed runs draw the same clients, and no sampler state needs saving.

Each builder takes the option's keys and, at run time, the `Population` to draw from; it returns a
round -> client ids function."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow_federated as tff

ClientSampler = Callable[[int], list[str]]  # round number -> client ids


@dataclasses.dataclass(frozen=True)
class Population:
    """What a sampler draws from: the training clients, how many a round, the seed; sizes only on demand (for the
    TFF download they cost a pass over every client)."""

    client_ids: Sequence[str]
    clients_per_round: int
    seed: int
    sizes: Callable[[], Mapping[str, int]]  # client id -> training characters

    @functools.cached_property
    def ids(self) -> list[str]:
        return sorted(self.client_ids)  # independent of the order the dataset lists them in


def client_shuffle_seed(seed: int, round_num: int) -> int:
    """The op seed that shuffles every client's batches in round `round_num`: a function of (seed, round), like
    the samplers, so reruns and resumed runs shuffle alike (a prime stride keeps seeds apart across rounds)."""
    return seed * 100_003 + round_num


def _tff_uniform(population: Population, replace: bool) -> ClientSampler:
    sample = tff.simulation.build_uniform_sampling_fn(population.ids, replace=replace, random_seed=population.seed)
    return lambda round_num: sample(round_num, population.clients_per_round)


def uniform(*, population: Population) -> ClientSampler:
    """Uniformly, without replacement within a round (tff.simulation.build_uniform_sampling_fn)."""
    return _tff_uniform(population, replace=False)


def with_replacement(*, population: Population) -> ClientSampler:
    """Uniformly with replacement: a client can be drawn twice in a round."""
    return _tff_uniform(population, replace=True)


def fixed(clients: Sequence[str], *, population: Population) -> ClientSampler:
    """The same clients every round (the option's checks: known ids, as many as clients_per_round)."""
    chosen = list(clients)
    return lambda round_num: list(chosen)


def size_weighted(*, population: Population) -> ClientSampler:
    """Without replacement, a client's chance proportional to its training characters."""
    ids, sizes = population.ids, population.sizes()
    weights = np.array([sizes[c] for c in ids], dtype=np.float64)
    probabilities = weights / weights.sum()

    def sample(round_num: int) -> list[str]:
        rng = np.random.default_rng([population.seed, round_num])
        picked = rng.choice(len(ids), population.clients_per_round, replace=False, p=probabilities)
        return [ids[i] for i in picked]

    return sample
