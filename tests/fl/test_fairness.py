"""Per-client fairness figures (fl/fairness.py), checked against NumPy on known per-client values."""

from __future__ import annotations

import numpy as np
import pytest

from fedlm.fl import fairness

IDS = [f"C{i}" for i in range(12)]
ACCURACY = [0.50, 0.10, 0.45, 0.30, 0.62, 0.41, 0.05, 0.55, 0.48, 0.39, 0.44, 0.70]
LOSS = [1.6, 3.9, 1.8, 2.5, 1.3, 2.0, 4.2, 1.5, 1.7, 2.1, 1.9, 1.1]
TOKENS = [40, 12, 30, 25, 60, 33, 8, 70, 41, 22, 35, 90]


def test_quantiles_and_the_worst_tenth_are_over_clients():
    metrics = fairness.summarize(IDS, ACCURACY, LOSS, TOKENS, sampled=None)
    for q in (10, 50, 90):
        assert metrics[f"eval_client_accuracy_p{q}"] == pytest.approx(np.percentile(ACCURACY, q))
        assert metrics[f"eval_client_loss_p{q}"] == pytest.approx(np.percentile(LOSS, q))
    # 10% of 12 clients, rounded up: the 2 of lowest accuracy (C6 0.05 and C1 0.10), their loss with them
    assert metrics["eval_worst10_accuracy"] == pytest.approx((0.05 + 0.10) / 2)
    assert metrics["eval_worst10_loss"] == pytest.approx((4.2 + 3.9) / 2)
    assert not any(k.startswith(("eval_seen", "eval_unseen")) for k in metrics)  # round 0: nobody trained yet


def test_seen_and_unseen_clients_are_averaged_apart():
    sampled = {"C0", "C4", "C11", "NOT_AN_EVAL_CLIENT"}
    metrics = fairness.summarize(IDS, ACCURACY, LOSS, TOKENS, sampled)
    seen = [i for i, c in enumerate(IDS) if c in sampled]
    unseen = [i for i, c in enumerate(IDS) if c not in sampled]
    assert metrics["eval_seen_clients"] == 3
    assert metrics["eval_seen_accuracy"] == pytest.approx(np.mean([ACCURACY[i] for i in seen]))
    assert metrics["eval_unseen_accuracy"] == pytest.approx(np.mean([ACCURACY[i] for i in unseen]))
    assert metrics["eval_seen_loss"] == pytest.approx(np.mean([LOSS[i] for i in seen]))
    assert metrics["eval_unseen_loss"] == pytest.approx(np.mean([LOSS[i] for i in unseen]))
    everyone = fairness.summarize(IDS, ACCURACY, LOSS, TOKENS, set(IDS))
    assert everyone["eval_seen_clients"] == 12 and "eval_unseen_accuracy" not in everyone


def test_a_client_without_a_real_target_character_is_left_out():
    with_empty = fairness.summarize([*IDS, "EMPTY"], [*ACCURACY, 0.0], [*LOSS, 0.0], [*TOKENS, 0], None)
    assert with_empty == fairness.summarize(IDS, ACCURACY, LOSS, TOKENS, None)


def test_sampled_so_far_is_the_union_of_the_rounds_draws_recomputed_from_the_sampler():
    draws = {1: ["A", "B"], 2: ["B", "C"], 3: ["D", "A"]}
    calls = []

    def sampler(round_num):
        calls.append(round_num)
        return draws[round_num]

    so_far = fairness.SampledSoFar(sampler)
    assert so_far(0) == frozenset()
    assert so_far(2) == {"A", "B", "C"} and so_far(3) == {"A", "B", "C", "D"}
    assert calls == [1, 2, 3]  # each round drawn once
    resumed = fairness.SampledSoFar(sampler)  # a resumed run at round 2 knows round 1's clients too
    assert resumed(2) == {"A", "B", "C"}
