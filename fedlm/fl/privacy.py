"""The privacy ledger of `aggregator=dp`: the epsilon (at a delta) that a run has spent after each round, from
dp_accounting, for the mechanism the run uses. Pure functions of that mechanism: no TensorFlow (dp_accounting needs
none), no config.

One round of `tff.learning.dp_aggregator(z, m)` is, for accounting, one Gaussian mechanism of noise multiplier `z`
on the sampled clients' clipped updates: TFF splits `z` between the clipped sum (noise multiplier z_v) and its
adaptive clip's noised clipped-client count (0.1 m: stddev 0.05 m on records of sensitivity 0.5), so that
z_v^-2 + (0.1 m)^-2 = z^-2, and the round's DpEvent that TFF keeps in the aggregator's state,
ComposedDpEvent([GaussianDpEvent(z_v), GaussianDpEvent(0.1 m)]), composes to exactly GaussianDpEvent(z)
(tests/fl/test_privacy.py checks it against TFF's).

The sampling around it is fedlm's (fedlm/fl/sampling.py), accounted as it is done:

- `without_replacement` (`sampling=uniform`): m distinct clients of the population N, anew each round:
  `SampledWithoutReplacementDpEvent(N, m, ...)`, which dp_accounting's RDP accountant supports under the
  replace-one relation (N public; Wang, Balle, Kasiviswanathan 2019), its PLD accountant not at all. Under
  replace-one, two clipped updates differ by up to twice the clip, so the Gaussian's noise multiplier relative to
  that sensitivity is z / 2: dp_accounting 0.4.3's RDP formulas take the multiplier relative to the sensitivity
  of the relation (google/differential-privacy issue #378), and fedlm passes z / 2.
- with `poisson_approximation`: Poisson sampling of rate m / N under add-or-remove-one, as TFF's tutorials and
  most papers account for it: comparable with them, but not a bound for the fixed-size sampling fedlm does.
- `same_clients` (`sampling=fixed`): the Gaussian every round, add-or-remove-one, no amplification.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant

from fedlm.conf.schema import SAME_CLIENTS
from fedlm.conf.schema import SAMPLED_WITHOUT_REPLACEMENT as WITHOUT_REPLACEMENT

ACCOUNTANTS = ("rdp", "pld")
Relation = dp_accounting.NeighboringRelation


def default_delta(population: int) -> float:
    """1 / N^1.1: below 1 / N, as delta must be for a guarantee per client to mean something."""
    return 1.0 / population**1.1


def adaptive_clip_noise(noise_multiplier: float, clients_per_round: int) -> tuple[float, float]:
    """How TFF's adaptive-clipping DP aggregator splits `noise_multiplier` (its `adaptive_clip_noise_params`): the
    noise multipliers of the clipped sum and of the clipped-client count, which compose to `noise_multiplier`."""
    if noise_multiplier == 0:
        return 0.0, 0.0
    count = 2 * 0.05 * clients_per_round  # stddev 0.05 m on records of +-0.5 (sensitivity 0.5)
    return (noise_multiplier**-2 - count**-2) ** -0.5, count


def effective_noise_multiplier(event: dp_accounting.DpEvent) -> float:
    """The noise multiplier of one Gaussian equivalent to a composition of Gaussians (sigma^-2 add up)."""
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return float(event.noise_multiplier)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        inverse = sum(effective_noise_multiplier(e) ** -2 for e in event.events)
        return inverse**-0.5
    raise TypeError(f"not a composition of Gaussian events: {event}")


@dataclasses.dataclass(frozen=True)
class Mechanism:
    """One round of aggregator=dp, as accounting sees it."""

    noise_multiplier: float  # TFF's total (effective) noise multiplier
    clients_per_round: int
    population: int  # the training clients sampling draws from
    sampling: str  # WITHOUT_REPLACEMENT or SAME_CLIENTS
    poisson_approximation: bool = False

    def __post_init__(self) -> None:
        if self.sampling not in (WITHOUT_REPLACEMENT, SAME_CLIENTS):
            raise ValueError(f"sampling {self.sampling!r}: allowed {WITHOUT_REPLACEMENT!r}, {SAME_CLIENTS!r}")
        if self.poisson_approximation and self.sampling != WITHOUT_REPLACEMENT:
            raise ValueError("poisson_approximation approximates sampling without replacement only")

    @property
    def relation(self) -> dp_accounting.NeighboringRelation:
        """Replace-one for fixed-size sampling without replacement (what its analysis needs), else add-or-remove."""
        if self.sampling == WITHOUT_REPLACEMENT and not self.poisson_approximation:
            return Relation.REPLACE_ONE
        return Relation.ADD_OR_REMOVE_ONE

    @property
    def model(self) -> str:
        """The sampling model accounted for, in words (a param of the run)."""
        if self.sampling == SAME_CLIENTS:
            return "same clients every round (no sampling), add-or-remove-one"
        if self.poisson_approximation:
            rate = f"{self.clients_per_round}/{self.population}"
            return f"Poisson sampling of rate {rate} (an approximation), add-or-remove-one"
        return f"{self.clients_per_round} of {self.population} without replacement, replace-one"


def round_event(mechanism: Mechanism) -> dp_accounting.DpEvent:
    """The DpEvent of one round: the Gaussian on the round's clients, within the round's sampling."""
    z = mechanism.noise_multiplier
    if z == 0:
        return dp_accounting.NonPrivateDpEvent()  # clipping without noise: no guarantee (epsilon inf)
    if mechanism.sampling == SAME_CLIENTS:
        return dp_accounting.GaussianDpEvent(z)
    if mechanism.poisson_approximation:
        q = mechanism.clients_per_round / mechanism.population
        return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    # Replace-one: sensitivity twice the clip, so the multiplier relative to it is z / 2 (see the module's doc).
    return dp_accounting.SampledWithoutReplacementDpEvent(
        mechanism.population, mechanism.clients_per_round, dp_accounting.GaussianDpEvent(z / 2)
    )


def run_event(mechanism: Mechanism, rounds: int) -> dp_accounting.DpEvent:
    """The DpEvent of `rounds` rounds: the round's, composed `rounds` times."""
    return dp_accounting.SelfComposedDpEvent(round_event(mechanism), rounds)


def make_accountant(name: str, mechanism: Mechanism) -> dp_accounting.PrivacyAccountant:
    """A fresh `rdp` or `pld` accountant under the mechanism's neighboring relation."""
    if name == "rdp":
        return rdp_privacy_accountant.RdpAccountant(neighboring_relation=mechanism.relation)
    if name == "pld":
        return dp_accounting.pld.PLDAccountant(neighboring_relation=mechanism.relation)
    raise ValueError(f"accountant {name!r}: allowed {', '.join(ACCOUNTANTS)}")


def supports(name: str, mechanism: Mechanism) -> bool:
    """Whether accountant `name` can account for the mechanism (dp_accounting's own answer)."""
    return make_accountant(name, mechanism).supports(run_event(mechanism, 1))


@functools.lru_cache(maxsize=256)
def epsilon(mechanism: Mechanism, rounds: int, delta: float, accountant: str) -> float:
    """Epsilon at `delta` after `rounds` rounds (0 after none): dp_accounting's accountant on the run's event."""
    if rounds == 0:
        return 0.0
    return float(make_accountant(accountant, mechanism).compose(run_event(mechanism, rounds)).get_epsilon(delta))


@functools.lru_cache(maxsize=64)
def _round_rdp(mechanism: Mechanism) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(orders, one round's RDP at each): RDP composes by addition, so r rounds' is r times this."""
    acc = make_accountant("rdp", mechanism).compose(round_event(mechanism))
    return tuple(acc.orders), tuple(acc.rdp)


def epsilon_after(mechanism: Mechanism, rounds: int, delta: float, accountant: str) -> float:
    """`epsilon`, computed once per mechanism for RDP: r rounds are r times one round's RDP (exactly what the RDP
    accountant does for `SelfComposedDpEvent`), so a round's epsilon costs microseconds, not a second."""
    if accountant != "rdp" or rounds == 0 or mechanism.noise_multiplier == 0:
        return epsilon(mechanism, rounds, delta, accountant)
    orders, rdp = _round_rdp(mechanism)
    return float(rdp_privacy_accountant.compute_epsilon(orders, [rounds * r for r in rdp], delta)[0])


class BudgetError(ValueError):
    """No noise multiplier TFF's DP aggregator allows meets the budget."""


def largest_noise_multiplier(clients_per_round: int) -> float:
    """TFF's adaptive clipping needs noise_multiplier < 0.1 clients_per_round (the count's share of the noise)."""
    return 0.1 * clients_per_round * (1 - 1e-6)


def calibrate(
    target_epsilon: float,
    rounds: int,
    delta: float,
    accountant: str,
    clients_per_round: int,
    population: int,
    sampling: str,
    poisson_approximation: bool = False,
) -> float:
    """The smallest noise multiplier whose `rounds` rounds spend at most `target_epsilon` at `delta`
    (dp_accounting.calibrate_dp_mechanism: within 1e-5 of it, never above the budget)."""

    def mechanism(z: float) -> Mechanism:
        return Mechanism(z, clients_per_round, population, sampling, poisson_approximation)

    high = largest_noise_multiplier(clients_per_round)
    spent = epsilon_after(mechanism(high), rounds, delta, accountant)
    if spent > target_epsilon:
        raise BudgetError(
            f"{rounds} rounds spend epsilon {spent:.4g} > {target_epsilon:g} even at noise_multiplier {high:.4g}, the "
            f"most TFF's adaptive clipping allows with clients_per_round={clients_per_round} (< 0.1 x it)"
        )
    low = high / 2
    while epsilon_after(mechanism(low), rounds, delta, accountant) <= target_epsilon:
        high, low = low, low / 2  # so that [low, high] brackets the budget
        if low < 1e-4:
            return high
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: make_accountant(accountant, mechanism(1.0)),
            lambda z: run_event(mechanism(z), rounds),
            target_epsilon,
            delta,
            dp_accounting.ExplicitBracketInterval(low, high),
            tol=1e-5,  # of the noise multiplier: its 5th decimal moves epsilon by less than 1e-4 of it
        )
    )


def rounds_within(budget: float, mechanism: Mechanism, rounds: int, delta: float, accountant: str) -> int:
    """The most rounds, up to `rounds`, whose epsilon stays within `budget` (epsilon grows with rounds: bisection)."""
    if epsilon_after(mechanism, rounds, delta, accountant) <= budget:
        return rounds
    low, high = 0, rounds  # epsilon(low) <= budget < epsilon(high)
    while high - low > 1:
        middle = (low + high) // 2
        if epsilon_after(mechanism, middle, delta, accountant) <= budget:
            low = middle
        else:
            high = middle
    return low


@dataclasses.dataclass(frozen=True)
class Ledger:
    """A DP run's accounting: its mechanism, delta and accountant; the budget, if any, and the rounds it allows."""

    mechanism: Mechanism
    delta: float
    accountant: str
    target_epsilon: float | None = None  # the budget
    calibrated: bool = False  # mechanism.noise_multiplier was calibrated to the budget
    rounds: int = 0  # the rounds the run trains: the configured ones, or fewer where the budget runs out

    def epsilon(self, round_num: int) -> float:
        """Epsilon at `delta` spent by rounds 1..round_num."""
        return epsilon_after(self.mechanism, round_num, self.delta, self.accountant)

    def params(self) -> dict[str, object]:
        """MLflow params: what the epsilons mean (delta and the population as numbers, even when defaulted)."""
        return {
            "aggregator.noise_multiplier": self.mechanism.noise_multiplier,  # calibrated or as configured
            "aggregator.delta": self.delta,
            "population": self.mechanism.population,
            "privacy_sampling": self.mechanism.model,
        }


def build_ledger(
    mechanism: Mechanism,
    rounds: int,
    delta: float | None = None,
    accountant: str = "rdp",
    target_epsilon: float | None = None,
    calibrate_noise: bool = False,
    calibrated_noise: float | None = None,
) -> Ledger:
    """The ledger of a run of `rounds` rounds: delta defaulted (1 / N^1.1), the noise calibrated to
    `target_epsilon` if asked (else the budget cuts the rounds where it runs out). `calibrated_noise`: the noise
    multiplier a resumed run was calibrated to when it started, kept (its rounds were trained with it)."""
    delta = default_delta(mechanism.population) if delta is None else delta
    if calibrate_noise and calibrated_noise is not None:
        mechanism = dataclasses.replace(mechanism, noise_multiplier=calibrated_noise)
    elif calibrate_noise:
        if target_epsilon is None:
            raise ValueError("calibrate_noise needs a target_epsilon")
        z = calibrate(
            target_epsilon,
            rounds,
            delta,
            accountant,
            mechanism.clients_per_round,
            mechanism.population,
            mechanism.sampling,
            mechanism.poisson_approximation,
        )
        mechanism = dataclasses.replace(mechanism, noise_multiplier=z)
    allowed = rounds if target_epsilon is None else rounds_within(target_epsilon, mechanism, rounds, delta, accountant)
    return Ledger(mechanism, delta, accountant, target_epsilon, calibrate_noise, allowed)


def describe(ledger: Ledger, rounds: int) -> str:
    """One line for the console: the mechanism, and the epsilon its rounds spend."""
    m = ledger.mechanism
    noise = f"noise_multiplier {m.noise_multiplier:.6g}" + (" (calibrated)" if ledger.calibrated else "")
    spent = ledger.epsilon(ledger.rounds)
    text = (
        f"privacy: {noise}, {m.model}; {ledger.rounds} rounds spend epsilon {spent:.4g} at delta {ledger.delta:.3g} "
        f"({ledger.accountant.upper()})"
    )
    if ledger.target_epsilon is not None:
        text += f", budget {ledger.target_epsilon:g}"
        if ledger.rounds < rounds:
            text += f": it allows {ledger.rounds} of the {rounds} rounds"
    return text if math.isfinite(spent) else text + " (no noise: no guarantee)"
