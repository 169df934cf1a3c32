"""participation= (fl/participation.py): who of a round's sampled clients reports, and how much it trains; a pure
function of (seed, round). Then the round loop's side (fl/loop.py's ParticipationRounds) on a tiny model in TFF."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fedlm.fl import participation as P
from fedlm.fl import sampling
from tests.conftest import compose_config

IDS = [f"PLAY_ROLE_{i:03d}" for i in range(200)]


def build(dropout=0.0, over_select=0, fraction=0.0, work=1.0, seed=0, clients_per_round=10):
    population = sampling.Population(IDS, clients_per_round + over_select, seed, lambda: {})
    sampler = sampling.uniform(population=population)
    return P.reliable(
        dropout, over_select, fraction, work, sampler=sampler, clients_per_round=clients_per_round, seed=seed
    )


def test_the_same_seed_drops_and_straggles_the_same_clients_and_another_seed_others():
    rounds = range(1, 21)
    first = [build(0.3, 3, 0.4, 0.5, seed=7)(r) for r in rounds]
    assert first == [build(0.3, 3, 0.4, 0.5, seed=7)(r) for r in rounds]  # a rerun, or a resumed run's process
    assert first != [build(0.3, 3, 0.4, 0.5, seed=8)(r) for r in rounds]
    assert len({tuple(p.dropped) for p in first}) > 5  # and each round has its own


def test_a_resumed_run_trains_the_same_clients_without_replaying_earlier_rounds():
    uninterrupted = build(0.3, 2, 0.3, 0.5, seed=3)
    for r in range(1, 6):
        uninterrupted(r)
    assert build(0.3, 2, 0.3, 0.5, seed=3)(6) == uninterrupted(6)


def test_dropout_drops_each_sampled_client_with_its_probability_independently_of_the_others():
    drawn = [build(0.25)(r) for r in range(1, 401)]
    dropped = sum(len(p.dropped) for p in drawn) / sum(len(p.sampled) for p in drawn)
    assert dropped == pytest.approx(0.25, abs=0.03)  # 4,000 draws: 3 standard errors is 0.021
    # A client's fate is a function of (seed, round, client): the same whoever else was sampled with it.
    for p in drawn[:20]:
        assert all(P.fails(0, drawn.index(p) + 1, c, 0.25) == (c in p.dropped) for c in p.sampled)


def test_over_selection_keeps_the_first_clients_per_round_that_report_in_sampled_order():
    for r in range(1, 30):
        p = build(0.3, over_select=4)(r)
        assert len(p.sampled) == 14
        survivors = [c for c in p.sampled if c not in p.dropped]
        assert p.reporting == survivors[:10]
    assert build(over_select=4)(1).reporting == build(over_select=4)(1).sampled[:10]  # no dropout: 4 unused


def test_stragglers_are_that_fraction_of_the_reporting_clients_training_a_share_of_their_batches_rounded_up():
    p = build(fraction=0.3, work=0.3)(1)
    assert len(p.stragglers) == 3 and p.stragglers <= set(p.reporting)
    slow, fast = sorted(p.stragglers)[0], next(c for c in p.reporting if c not in p.stragglers)
    assert [p.batches(slow, n) for n in (10, 7, 1)] == [3, 3, 1] and p.batches(fast, 10) == 10
    assert p.metrics() == {"sampled": 10, "dropped": 0, "reporting": 10, "stragglers": 3}


def test_default_keys_are_todays_behaviour():
    assert P.is_reliable(0.0, 0, 0.0, 1.0) and P.is_reliable(0.0, 0, 0.5, 1.0)
    assert not P.is_reliable(0.1, 0, 0.0, 1.0) and not P.is_reliable(0.0, 1, 0.0, 1.0)
    p = build()(4)
    assert p.reporting == p.sampled == sampling.uniform(population=sampling.Population(IDS, 10, 0, dict))(4)


# ---- the round loop: ParticipationRounds on a tiny model ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_process():
    import tensorflow_federated as tff

    from fedlm import experiment
    from fedlm.fl import process, runtime
    from tests.fl.test_process_options import SEQ, keras_model

    with runtime.tff_context():
        cfg = compose_config(["server_optimizer=sgd", "clients_per_round=2"])
        learning = experiment.build_learning_process(cfg, process.build_model_fn(keras_model, SEQ))
        tf.keras.utils.set_random_seed(0)
        start = process.StartFrom(learning, tff.learning.models.ModelWeights.from_model(keras_model()))
        yield cfg, learning, start


def batches(n: int, seed: int) -> tf.data.Dataset:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 80, (n, 6)).astype(np.int32)
    return tf.data.Dataset.from_tensor_slices((x, x)).batch(1)


def test_rounds_train_the_reporting_clients_stragglers_on_their_share_and_skip_a_round_nobody_reports(tiny_process):
    from fedlm.fl.loop import ParticipationRounds

    _, learning, start = tiny_process
    rounds = {
        1: P.RoundParticipation(["A", "B", "C"], ["C"], ["A", "B"], frozenset({"B"}), 0.5),
        2: P.RoundParticipation(["A", "B"], ["A", "B"], [], frozenset(), 0.5),
    }
    process = ParticipationRounds(start, rounds.__getitem__, lambda c, r: batches(4, seed=ord(c)))
    state = process.initialize()
    datasets = process.select(1)
    assert [int(d.reduce(np.int64(0), lambda n, _: n + 1)) for d in datasets] == [4, 2]  # B straggles: 2 of 4
    out = process.next(state, datasets)
    assert out.metrics["participation"] == {"sampled": 3, "dropped": 1, "reporting": 2, "stragglers": 1}
    assert (
        out.metrics["client_work"]["train"]["num_batches"] == 6
        and out.metrics["client_work"]["train"]["num_clients"] == 2
    )
    assert process.select(2) == []
    skipped = process.next(out.state, [])
    assert skipped.metrics == {"participation": {"sampled": 2, "dropped": 2, "reporting": 0, "stragglers": 0}}
    for a, b in zip(
        learning.get_model_weights(skipped.state).trainable, learning.get_model_weights(out.state).trainable
    ):
        np.testing.assert_array_equal(a, b)  # the server model as it was
