"""`schedule=` and `server_schedule=`: the learning rate of each round (conf/schedule/, conf/server_schedule/).

Pure arithmetic, no TensorFlow: fedlm/fl/optimizers.py hands TFF these values, so what a round trains with is what
this module computes (and what `tests/fl/test_schedules.py` checks against the closed forms).

`t` counts the rounds before the one trained: round 1 trains with the rate at t = 0, as TFF's counters have it (the
client work's round number in `build_weighted_fed_avg_with_optimizer_schedule`, the server optimizer's step in
`schedule_learning_rate`). The conventions are those of TFF's research code (google-research/federated,
`utils/optimizers/optimizer_utils.py`): a warm-up of N rounds is linear, `lr * (t + 1) / N` for t < N, and the schedule
proper starts after it, at `t - N`; exponential and inverse square root decay over `t / decay_rounds`
(`floor(t / decay_rounds)` with `staircase`). Cosine is Keras's `CosineDecay`, from the end of the warm-up to the
end of `total_rounds`.

Each builder takes the option's keys and, at run time, the optimizer's `learning_rate` (the rate the schedule
scales: its peak); it returns a `Schedule`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The learning rate of the round after `t` rounds: `schedule(t)`."""

    name: str  # the option's: constant, exponential, inverse_sqrt, cosine
    learning_rate: float  # the optimizer's: reached at the end of the warm-up
    warmup_rounds: int
    decay: Callable[[int], float]  # the schedule after the warm-up, as a fraction of learning_rate; decay(0) = 1

    def __call__(self, t: int) -> float:
        if t < 0:
            raise ValueError(f"round index {t}: the rounds before a round are >= 0")
        if t < self.warmup_rounds:
            return self.learning_rate * (t + 1) / self.warmup_rounds
        return self.learning_rate * self.decay(t - self.warmup_rounds)

    @property
    def constant(self) -> bool:
        """Every round trains at `learning_rate`: TFF's processes need no schedule (nor its state)."""
        return self.name == "constant" and self.warmup_rounds == 0

    def table(self, rounds: int) -> list[float]:
        """The rates of t = 0 .. `rounds` (the last: what TFF's state holds after the last round)."""
        return [self(t) for t in range(rounds + 1)]


def _constant(t: int) -> float:
    return 1.0


def _exponential(t: int, decay_rate: float, decay_rounds: int, staircase: bool) -> float:
    return decay_rate ** (t // decay_rounds if staircase else t / decay_rounds)


def _inverse_sqrt(t: int, decay_rate: float, decay_rounds: int, staircase: bool) -> float:
    return 1.0 / math.sqrt(1.0 + decay_rate * (t // decay_rounds if staircase else t / decay_rounds))


def _cosine(t: int, decay_rounds: int, min_fraction: float) -> float:
    progress = min(t, decay_rounds) / decay_rounds
    return min_fraction + (1.0 - min_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def constant(warmup_rounds: int, *, learning_rate: float) -> Schedule:
    """The optimizer's rate every round (after the warm-up, if any)."""
    return Schedule("constant", learning_rate, warmup_rounds, _constant)


def exponential(
    decay_rate: float, decay_rounds: int, staircase: bool, warmup_rounds: int, *, learning_rate: float
) -> Schedule:
    """`learning_rate * decay_rate ** (t / decay_rounds)`: multiplied by decay_rate every decay_rounds rounds."""
    decay = functools.partial(_exponential, decay_rate=decay_rate, decay_rounds=decay_rounds, staircase=staircase)
    return Schedule("exponential", learning_rate, warmup_rounds, decay)


def inverse_sqrt(
    decay_rate: float, decay_rounds: int, staircase: bool, warmup_rounds: int, *, learning_rate: float
) -> Schedule:
    """`learning_rate / sqrt(1 + decay_rate * t / decay_rounds)`."""
    decay = functools.partial(_inverse_sqrt, decay_rate=decay_rate, decay_rounds=decay_rounds, staircase=staircase)
    return Schedule("inverse_sqrt", learning_rate, warmup_rounds, decay)


def cosine(total_rounds: int, min_fraction: float, warmup_rounds: int, *, learning_rate: float) -> Schedule:
    """Half a cosine from `learning_rate` (after the warm-up) down to `min_fraction * learning_rate`, reached after
    `total_rounds` rounds (warm-up included); that floor from then on."""
    if total_rounds <= warmup_rounds:  # the option's check refuses this first, naming the keys
        raise ValueError(f"cosine: total_rounds={total_rounds} leaves no round after {warmup_rounds} warm-up rounds")
    decay = functools.partial(_cosine, decay_rounds=total_rounds - warmup_rounds, min_fraction=min_fraction)
    return Schedule("cosine", learning_rate, warmup_rounds, decay)
