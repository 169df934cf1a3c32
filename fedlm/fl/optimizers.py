"""The client and server optimizers as the algorithms take them: `optimizer=` / `server_optimizer=` (TFF's
optimizers) at the learning rates of `schedule=` / `server_schedule=` (fedlm/fl/schedules.py).

A constant schedule changes nothing: the optimizer as configured, TFF's plain processes. Otherwise:

- the client's rate is TFF's `build_weighted_fed_avg_with_optimizer_schedule`'s: its client work counts the rounds
  in its state and builds each round's client optimizer at `learning_rate_fn(round)`, reporting the rate as
  `client_work/client_learning_rate`;
- the server's is `tff.learning.optimizers.schedule_learning_rate`'s: the optimizer's state counts its steps and
  holds the rate of the next one, which `ServerLearningRate` reports as `finalizer/learning_rate`.

In both, the rate of the round after t rounds is the schedule's, looked up in a table of `Schedule.table`: TF
computes nothing of its own, so a round trains at exactly the rate fedlm/fl/schedules.py gives (in float32).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any, Optional

import tensorflow as tf
import tensorflow_federated as tff

from fedlm.fl.schedules import Schedule

Optimizer = tff.learning.optimizers.Optimizer
LearningRateFn = Callable[[Any], Any]  # the rounds before a round (int32 tensor) -> its learning rate (float32)
LEARNING_RATE = tff.learning.optimizers.LEARNING_RATE_KEY


def learning_rate_fn(schedule: Schedule, rounds: int) -> LearningRateFn:
    """The schedule as TF: t -> its rate, for t = 0 .. rounds (later t: the last, which no round trains with)."""
    table = schedule.table(rounds)

    def rate(t: Any) -> Any:
        values = tf.constant(table, tf.float32)
        return tf.gather(values, tf.clip_by_value(tf.cast(t, tf.int32), 0, len(table) - 1))

    return rate


@dataclasses.dataclass(frozen=True)
class ClientOptimizer:
    """The client optimizer and, if scheduled, the learning rate of each round.

    `optimizer` is the configured one (at its own learning rate): what an unscheduled process trains with, and
    what an algorithm wraps (`with_optimizer`, FedProx's proximal step); `at(rate)` is it at a round's rate."""

    optimizer: Optimizer
    learning_rate_fn: Optional[LearningRateFn] = None  # None: constant

    @property
    def scheduled(self) -> bool:
        return self.learning_rate_fn is not None

    def at(self, learning_rate: Any) -> Optimizer:
        return AtLearningRate(self.optimizer, learning_rate)

    def with_optimizer(self, wrap: Callable[[Optimizer], Optimizer]) -> ClientOptimizer:
        return dataclasses.replace(self, optimizer=wrap(self.optimizer))


def client_optimizer(optimizer: Optimizer, schedule: Schedule, rounds: int) -> ClientOptimizer:
    return ClientOptimizer(optimizer, None if schedule.constant else learning_rate_fn(schedule, rounds))


def server_optimizer(optimizer: Optimizer, schedule: Schedule, rounds: int) -> Optimizer:
    """The server optimizer, its learning rate scheduled by TFF's `schedule_learning_rate` unless constant."""
    if schedule.constant:
        return optimizer
    return tff.learning.optimizers.schedule_learning_rate(optimizer, learning_rate_fn(schedule, rounds))


class AtLearningRate(Optimizer):
    """`inner` whose learning rate is `learning_rate` (a tensor: the round's), set in its state.

    Not `build_*(learning_rate=tensor)`: TFF 0.87's `build_rmsprop` compares its learning rate with 0 in Python,
    which a tensor inside TFF's client computation cannot do (tests/fl/test_process_options.py shows it). Every TFF
    optimizer reads its rate from its state (`schedule_learning_rate` relies on it); `set_hparams` puts it there,
    through a wrapper's (FedProx's) too."""

    def __init__(self, inner: Optimizer, learning_rate: Any):
        self._inner, self._learning_rate = inner, learning_rate

    def initialize(self, specs: Any) -> Any:
        state = self._inner.initialize(specs)
        hparams = collections.OrderedDict(self._inner.get_hparams(state))
        hparams[LEARNING_RATE] = tf.cast(self._learning_rate, tf.float32)
        return self._inner.set_hparams(state, hparams)

    def next(self, state, weights, gradients):
        return self._inner.next(state, weights, gradients)

    def get_hparams(self, state):
        return self._inner.get_hparams(state)

    def set_hparams(self, state, hparams):
        return self._inner.set_hparams(state, hparams)


class ServerLearningRate:
    """A started learning process (`process.StartFrom`) whose round metrics also hold the server's learning rate of
    the round, as `finalizer/learning_rate`: read from the state the round starts from, where TFF's
    `schedule_learning_rate` keeps the rate of the server's next step."""

    def __init__(self, process: Any):
        self.process = process

    def initialize(self) -> Any:
        return self.process.initialize()

    def next(self, state: Any, client_data: Any) -> Any:
        rate = float(state.finalizer["optimizer"][LEARNING_RATE])
        output = self.process.next(state, client_data)
        metrics = collections.OrderedDict(output.metrics)
        metrics["finalizer"] = collections.OrderedDict(metrics.get("finalizer") or {}, learning_rate=rate)
        return output._replace(metrics=metrics)
