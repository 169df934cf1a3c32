"""`schedule=` / `server_schedule=`: each schedule's rates against its closed form, the warm-up before any of them,
and the options as the config builds them (no TensorFlow: fedlm/fl/schedules.py is light)."""

from __future__ import annotations

import math

import pytest
from hydra.utils import instantiate

from fedlm.fl import schedules
from tests.conftest import compose_config

LR = 0.4


def rates(schedule: schedules.Schedule, n: int) -> list[float]:
    return [schedule(t) for t in range(n)]


def test_constant_is_the_learning_rate_every_round_and_needs_no_schedule():
    schedule = schedules.constant(0, learning_rate=LR)
    assert rates(schedule, 5) == [LR] * 5
    assert schedule.constant


def test_a_warm_up_is_linear_to_the_learning_rate_then_the_schedule_starts():
    warm = schedules.constant(4, learning_rate=LR)
    assert rates(warm, 6) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])  # LR * (t + 1) / 4, then LR
    assert not warm.constant  # TFF must schedule it
    decayed = schedules.exponential(0.5, 1, False, 3, learning_rate=LR)
    # the decay counts from the end of the warm-up: LR * 0.5 ** (t - 3)
    assert rates(decayed, 6) == pytest.approx([LR / 3, 2 * LR / 3, LR, LR, LR / 2, LR / 4])


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decays_by_decay_rate_every_decay_rounds(staircase):
    schedule = schedules.exponential(0.1, 4, staircase, 0, learning_rate=LR)
    for t in range(12):
        exponent = t // 4 if staircase else t / 4
        assert schedule(t) == pytest.approx(LR * 0.1**exponent)
    assert schedule(8) == pytest.approx(LR / 100)
    assert rates(schedules.exponential(1.0, 3, staircase, 0, learning_rate=LR), 5) == [LR] * 5  # rate 1: constant


@pytest.mark.parametrize("staircase", [False, True])
def test_inverse_sqrt_is_one_over_the_square_root_of_time(staircase):
    schedule = schedules.inverse_sqrt(1.0, 1, staircase, 0, learning_rate=LR)
    assert rates(schedule, 4) == pytest.approx([LR, LR / math.sqrt(2), LR / math.sqrt(3), LR / 2])
    slower = schedules.inverse_sqrt(0.5, 10, staircase, 0, learning_rate=LR)
    for t in range(40):
        steps = t // 10 if staircase else t / 10
        assert slower(t) == pytest.approx(LR / math.sqrt(1 + 0.5 * steps))


def test_cosine_falls_from_the_rate_to_its_floor_over_total_rounds():
    schedule = schedules.cosine(10, 0.1, 0, learning_rate=LR)
    for t in range(15):
        want = LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 10) / 10)))
        assert schedule(t) == pytest.approx(want)
    assert schedule(0) == pytest.approx(LR) and schedule(5) == pytest.approx(LR * 0.55)  # halfway: (1 + 0.1) / 2
    assert schedule(10) == schedule(14) == pytest.approx(0.1 * LR)  # the floor from total_rounds on
    assert all(a > b for a, b in zip(rates(schedule, 11), rates(schedule, 11)[1:]))


def test_cosine_counts_its_warm_up_in_total_rounds():
    schedule = schedules.cosine(10, 0.0, 2, learning_rate=LR)  # 2 warm-up rounds, then a cosine over 8
    assert rates(schedule, 3) == pytest.approx([LR / 2, LR, LR])
    assert schedule(6) == pytest.approx(LR / 2)  # halfway through the 8: 2 + 4
    assert schedule(10) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="no round after 10 warm-up rounds"):
        schedules.cosine(10, 0.0, 10, learning_rate=LR)


def test_the_table_holds_every_round_and_the_state_after_the_last():
    schedule = schedules.inverse_sqrt(1.0, 1, False, 2, learning_rate=LR)
    assert schedule.table(3) == rates(schedule, 4)
    with pytest.raises(ValueError, match="round index -1"):
        schedule(-1)


@pytest.mark.parametrize("group", ["schedule", "server_schedule"])
@pytest.mark.parametrize(
    "overrides, want",
    [
        (["constant"], [LR] * 4),
        (["constant", "warmup_rounds=2"], [LR / 2, LR, LR, LR]),
        (["exponential"], [LR * 0.5 ** (t / 10) for t in range(4)]),  # conf/schedule/exponential.yaml's defaults
        (["exponential", "decay_rate=0.1", "decay_rounds=2", "staircase=true"], [LR, LR, LR / 10, LR / 10]),
        (["inverse_sqrt"], [LR / math.sqrt(1 + t) for t in range(4)]),
        (["cosine"], [LR * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]),  # over the run's 4 rounds
        (["cosine", "total_rounds=2", "min_fraction=0.5"], [LR, 0.75 * LR, 0.5 * LR, 0.5 * LR]),
    ],
)
def test_the_options_build_their_schedule_from_the_config(group, overrides, want):
    option, *keys = overrides
    cfg = compose_config(["rounds=4", f"{group}={option}", *(f"{group}.{k}" for k in keys)])
    schedule = instantiate(cfg[group])(learning_rate=LR)
    assert isinstance(schedule, schedules.Schedule) and schedule.name == option
    assert rates(schedule, 4) == pytest.approx(want)
