"""The privacy ledger (fl/privacy.py): its epsilon is dp_accounting's for the mechanism a DP run uses, moves the right
way with rounds and noise, its calibration and budget meet the target, and the event it accounts for is the one
TFF's DP aggregator reports."""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedlm.conf import schema
from fedlm.fl import privacy

N, M = 894, 20  # the default data's training clients; clients a round
DELTA = 1 / N**1.1


def direct(
    noise: float,
    rounds: int,
    sampling: str,
    accountant: str,
    poisson: bool = False,
    population: int = N,
    clients: int = M,
    delta: float = DELTA,
) -> float:
    """Epsilon of the mechanism written out with dp_accounting's classes alone."""
    if sampling == privacy.SAME_CLIENTS:
        relation, event = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, dp_accounting.GaussianDpEvent(noise)
    elif poisson:
        relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        event = dp_accounting.PoissonSampledDpEvent(clients / population, dp_accounting.GaussianDpEvent(noise))
    else:  # replace-one: the clipped sum's sensitivity is twice the clip
        relation = dp_accounting.NeighboringRelation.REPLACE_ONE
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            population, clients, dp_accounting.GaussianDpEvent(noise / 2)
        )
    if accountant == "rdp":
        acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
    else:
        acc = pld_privacy_accountant.PLDAccountant(neighboring_relation=relation)
    return acc.compose(dp_accounting.SelfComposedDpEvent(event, rounds)).get_epsilon(delta)


CASES = [  # (sampling, accountant, poisson approximation): every one a DP run can be configured with
    (privacy.WITHOUT_REPLACEMENT, "rdp", False),
    (privacy.WITHOUT_REPLACEMENT, "rdp", True),
    (privacy.WITHOUT_REPLACEMENT, "pld", True),
    (privacy.SAME_CLIENTS, "rdp", False),
    (privacy.SAME_CLIENTS, "pld", False),
]


@pytest.mark.parametrize("sampling, accountant, poisson", CASES)
def test_epsilon_is_dp_accountings_for_the_same_mechanism(sampling, accountant, poisson):
    noise = 1.5 if sampling == privacy.WITHOUT_REPLACEMENT else 1.9
    ledger = privacy.build_ledger(privacy.Mechanism(noise, M, N, sampling, poisson), 30, accountant=accountant)
    assert ledger.delta == pytest.approx(DELTA, rel=1e-12)  # the default: 1 / population^1.1
    assert ledger.epsilon(0) == 0.0
    for rounds in (1, 7, 30):
        assert ledger.epsilon(rounds) == pytest.approx(direct(noise, rounds, sampling, accountant, poisson), rel=1e-6)


@pytest.mark.parametrize("sampling, accountant, poisson", CASES)
def test_more_rounds_spend_more_and_more_noise_less(sampling, accountant, poisson):
    def eps(noise: float, rounds: int) -> float:
        return privacy.epsilon(privacy.Mechanism(noise, M, N, sampling, poisson), rounds, DELTA, accountant)

    assert 0 < eps(1.5, 1) < eps(1.5, 5) < eps(1.5, 25)
    assert eps(1.0, 10) > eps(1.5, 10) > eps(1.9, 10)


def test_no_noise_means_no_guarantee():
    assert privacy.epsilon(privacy.Mechanism(0.0, M, N, privacy.WITHOUT_REPLACEMENT), 3, DELTA, "rdp") == math.inf


def test_calibration_spends_the_budget_and_no_more_and_a_resumed_run_keeps_its_noise():
    mechanism = privacy.Mechanism(0.5, M, N, privacy.WITHOUT_REPLACEMENT)
    ledger = privacy.build_ledger(mechanism, 40, target_epsilon=5.0, calibrate_noise=True)
    z = ledger.mechanism.noise_multiplier
    assert ledger.calibrated and ledger.rounds == 40
    assert 5.0 - 1e-3 < ledger.epsilon(40) <= 5.0
    less = dataclasses.replace(mechanism, noise_multiplier=z - 1e-3)
    assert privacy.epsilon(less, 40, DELTA, "rdp") > 5.0  # the smallest such noise, to the calibration's tolerance
    assert ledger.params()["aggregator.noise_multiplier"] == z  # the noise used is the run's param

    # Resumed with rounds=80: the noise its first rounds were trained with, and the budget still holds.
    resumed = privacy.build_ledger(mechanism, 80, target_epsilon=5.0, calibrate_noise=True, calibrated_noise=z)
    assert resumed.mechanism.noise_multiplier == z and resumed.rounds == 40


def test_an_unreachable_budget_says_why():
    with pytest.raises(privacy.BudgetError, match="even at noise_multiplier 2, the most TFF's adaptive clipping"):
        privacy.build_ledger(
            privacy.Mechanism(0.5, M, N, privacy.WITHOUT_REPLACEMENT), 500, target_epsilon=0.1, calibrate_noise=True
        )


def test_the_budget_allows_the_rounds_within_it():
    mechanism = privacy.Mechanism(1.5, M, N, privacy.WITHOUT_REPLACEMENT)
    full = privacy.epsilon(mechanism, 100, DELTA, "rdp")
    ledger = privacy.build_ledger(mechanism, 100, target_epsilon=full / 2)
    k = ledger.rounds
    assert 0 < k < 100
    assert ledger.epsilon(k) <= full / 2 < ledger.epsilon(k + 1)
    assert privacy.build_ledger(mechanism, 100, target_epsilon=full).rounds == 100


@pytest.mark.parametrize("option", sorted(schema.GROUPS["sampling"]))
def test_the_sampling_options_declare_what_dp_accounting_supports(option):
    """The schema refuses what dp_accounting cannot account for, before TensorFlow: its declarations must agree with
    dp_accounting's own `supports`."""
    declared = schema.GROUPS["sampling"][option].privacy_sampling
    if declared is None:
        assert schema.GROUPS["sampling"][option].privacy_unsupported
        return
    assert declared in (privacy.WITHOUT_REPLACEMENT, privacy.SAME_CLIENTS)
    for poisson in (False, True) if declared == privacy.WITHOUT_REPLACEMENT else (False,):
        mechanism = privacy.Mechanism(1.0, M, N, declared, poisson)
        assert privacy.supports("rdp", mechanism)
        # the schema refuses pld for fixed-size sampling without replacement, unless approximated as Poisson
        assert privacy.supports("pld", mechanism) == (declared == privacy.SAME_CLIENTS or poisson)
    with_replacement = dp_accounting.SampledWithReplacementDpEvent(N, M, dp_accounting.GaussianDpEvent(1.0))
    for acc in (rdp_privacy_accountant.RdpAccountant(), pld_privacy_accountant.PLDAccountant()):
        assert not acc.supports(with_replacement)  # why sampling=with_replacement is refused


def test_the_dp_aggregators_noise_split_is_tffs():
    from tensorflow_federated.python.aggregators import differential_privacy

    for noise, clients in ((0.5, 10), (1.0, 20), (3.0, 100)):
        value, count_stddev = differential_privacy.adaptive_clip_noise_params(noise, float(clients))
        ours = privacy.adaptive_clip_noise(noise, clients)
        assert ours == pytest.approx((value, count_stddev / 0.5), rel=1e-12)  # the count's records: +-0.5


@pytest.mark.parametrize("zeroing", [True, False])
def test_the_event_accounted_for_is_the_one_tffs_dp_aggregator_reports(zeroing):
    """One round of the real aggregator: the DpEvent TFF keeps in its state composes to the Gaussian the ledger
    accounts for (noise multiplier `z`: the clipped sum's and the clipped count's Gaussians, composed)."""
    import numpy as np
    import tensorflow_federated as tff
    from tensorflow_federated.python.aggregators import differential_privacy

    from fedlm.fl import aggregators, runtime

    noise, clients = 1.0, 20
    factory = aggregators.dp(
        noise, zeroing, None, "rdp", False, None, False, weighted=False, clients_per_round=clients, seed=0
    )
    with runtime.tff_context():
        process = factory.create(tff.TensorType(np.float32, [3]))
        state = process.next(process.initialize(), [np.full(3, i, np.float32) for i in range(4)]).state
    dp_state = state["inner_agg"] if zeroing else state
    event = differential_privacy.extract_dp_event_from_state(dp_state)
    assert isinstance(event, dp_accounting.ComposedDpEvent)
    reported = [e.noise_multiplier for e in event.events]
    assert reported == pytest.approx(list(privacy.adaptive_clip_noise(noise, clients)), rel=1e-6)  # float32
    assert privacy.effective_noise_multiplier(event) == pytest.approx(noise, rel=1e-6)
    assert privacy.round_event(privacy.Mechanism(noise, clients, N, privacy.SAME_CLIENTS)) == (
        dp_accounting.GaussianDpEvent(noise)
    )
