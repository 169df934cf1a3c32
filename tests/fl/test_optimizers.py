"""The schedules as TFF takes them (fedlm/fl/optimizers.py): TF's rate of every round is the schedule's, every TFF
optimizer takes a round's rate, and the schedules agree with Keras's own where Keras has one."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hydra.utils import instantiate

from fedlm.fl import optimizers, schedules
from tests.conftest import compose_config

SCHEDULES = [
    schedules.constant(3, learning_rate=0.5),
    schedules.exponential(0.5, 3, True, 2, learning_rate=0.5),
    schedules.inverse_sqrt(2.0, 1, False, 0, learning_rate=0.5),
    schedules.cosine(8, 0.1, 2, learning_rate=0.5),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_tf_gives_every_round_the_schedules_rate_and_the_last_after_the_table(schedule):
    rate = tf.function(optimizers.learning_rate_fn(schedule, rounds=10))
    got = [float(rate(tf.constant(t, tf.int32))) for t in range(13)]
    want = [schedule(min(t, 10)) for t in range(13)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_the_schedules_are_keras_schedules_counted_in_rounds():
    """An independent implementation of the same closed forms (without warm-up: Keras's have none or another)."""
    keras = tf.keras.optimizers.schedules
    pairs = [
        (schedules.exponential(0.3, 4, False, 0, learning_rate=0.5), keras.ExponentialDecay(0.5, 4, 0.3)),
        (schedules.exponential(0.3, 4, True, 0, learning_rate=0.5), keras.ExponentialDecay(0.5, 4, 0.3, True)),
        (schedules.cosine(12, 0.2, 0, learning_rate=0.5), keras.CosineDecay(0.5, 12, alpha=0.2)),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose([ours(t) for t in range(16)], [float(theirs(t)) for t in range(16)], rtol=1e-5)


@pytest.mark.parametrize("name", ["sgd", "sgdm", "adam", "adamw", "adagrad", "yogi", "rmsprop"])
def test_every_tff_optimizer_trains_at_the_rate_it_is_given_inside_a_graph(name):
    """One SGD-like step from zero state: a step at rate r moves the weights r / r0 times as far as at rate r0."""
    optimizer = instantiate(compose_config([f"optimizer={name}"]).optimizer)
    specs = (tf.TensorSpec([2], tf.float32),)

    @tf.function
    def step(rate):
        scheduled = optimizers.AtLearningRate(optimizer, rate)
        state = scheduled.initialize(specs)
        _, (weights,) = scheduled.next(state, (tf.zeros([2]),), (tf.constant([1.0, -2.0]),))
        return weights, scheduled.get_hparams(state)["learning_rate"]

    small, rate_small = step(tf.constant(0.01))
    large, rate_large = step(tf.constant(0.04))
    assert float(rate_small) == pytest.approx(0.01) and float(rate_large) == pytest.approx(0.04)
    np.testing.assert_allclose(large.numpy(), 4 * small.numpy(), rtol=1e-5)
    assert np.all(small.numpy() != 0)


def test_tff_rmsprop_cannot_be_built_at_a_tensor_rate_which_is_why_fedlm_sets_it_in_the_state():
    """Documents the TFF 0.87 bug behind AtLearningRate: if this starts failing, TFF was fixed."""
    import tensorflow_federated as tff

    @tf.function
    def build(rate):
        return tff.learning.optimizers.build_rmsprop(rate).initialize((tf.TensorSpec([2], tf.float32),))

    with pytest.raises(tf.errors.OperatorNotAllowedInGraphError, match="symbolic `tf.Tensor` as a Python `bool`"):
        build(tf.constant(0.1))


def test_a_constant_schedule_leaves_the_optimizers_as_configured():
    import tensorflow_federated as tff

    sgd = tff.learning.optimizers.build_sgdm(0.5)
    constant = schedules.constant(0, learning_rate=0.5)
    assert optimizers.server_optimizer(sgd, constant, 10) is sgd
    client = optimizers.client_optimizer(sgd, constant, 10)
    assert client.optimizer is sgd and not client.scheduled
    assert optimizers.client_optimizer(sgd, schedules.constant(1, learning_rate=0.5), 10).scheduled
