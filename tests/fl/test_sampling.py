"""Client samplers: seeded functions of the round, each with the statistics its name promises."""

from __future__ import annotations

import collections

import pytest
from hydra.utils import instantiate

from fedlm.fl.sampling import Population
from tests.conftest import compose_config

IDS = [f"PLAY_ROLE_{i:02d}" for i in range(30)]


def build_client_sampler(name, client_ids, clients_per_round, seed, client_sizes=None, fixed_clients=None):
    """`sampling=<name>` as a run builds it: the composed option, instantiated, called with the population."""
    overrides = [f"sampling={name}"] + ([f"sampling.clients=[{','.join(fixed_clients)}]"] if fixed_clients else [])
    population = Population(client_ids, clients_per_round, seed, lambda: client_sizes)
    return instantiate(compose_config(overrides).sampling)(population=population)


@pytest.mark.parametrize("name", ["uniform", "with_replacement", "size_weighted"])
def test_same_seed_same_clients_other_seed_other_clients(name):
    sizes = {c: 1 + i for i, c in enumerate(IDS)}
    first = build_client_sampler(name, IDS, 5, seed=3, client_sizes=sizes)
    again = build_client_sampler(name, list(reversed(IDS)), 5, seed=3, client_sizes=sizes)  # order-independent
    other = build_client_sampler(name, IDS, 5, seed=4, client_sizes=sizes)
    rounds = range(1, 21)
    assert [first(r) for r in rounds] == [again(r) for r in rounds] == [first(r) for r in rounds]
    assert [first(r) for r in rounds] != [other(r) for r in rounds]
    assert len({tuple(first(r)) for r in rounds}) > 15  # rounds differ from each other
    assert all(len(first(r)) == 5 and set(first(r)) <= set(IDS) for r in rounds)


@pytest.mark.parametrize("name", ["uniform", "size_weighted"])
def test_without_replacement_within_a_round(name):
    sample = build_client_sampler(name, IDS, 30, seed=0, client_sizes=dict.fromkeys(IDS, 5))
    assert all(sorted(sample(r)) == IDS for r in range(1, 11))


def test_with_replacement_draws_a_client_twice_in_a_round():
    sample = build_client_sampler("with_replacement", IDS[:5], 5, seed=0)
    assert any(len(set(sample(r))) < 5 for r in range(1, 21))


def test_fixed_gives_the_list_every_round():
    sample = build_client_sampler("fixed", IDS, 2, seed=0, fixed_clients=["PLAY_ROLE_07", "PLAY_ROLE_03"])
    assert all(sample(r) == ["PLAY_ROLE_07", "PLAY_ROLE_03"] for r in range(1, 6))


def test_size_weighted_picks_in_proportion_to_size():
    sizes = {"BIG": 90, "MID": 9, "SMALL": 1}
    sample = build_client_sampler("size_weighted", list(sizes), 1, seed=0, client_sizes=sizes)
    counts = collections.Counter(sample(r)[0] for r in range(1, 3001))
    shares = {c: counts[c] / 3000 for c in sizes}
    assert shares["BIG"] == pytest.approx(0.90, abs=0.03) and shares["MID"] == pytest.approx(0.09, abs=0.03)
    uniform = build_client_sampler("uniform", list(sizes), 1, seed=0)
    assert collections.Counter(uniform(r)[0] for r in range(1, 3001))["BIG"] / 3000 == pytest.approx(1 / 3, abs=0.05)
