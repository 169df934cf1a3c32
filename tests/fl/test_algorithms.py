"""FedSGD and MimeLite (fl/algorithms.py), built as `fedlm.run` builds them, against their definitions: the expected
server weights are computed here from plain TF gradients of the tiny model (tests/fl/test_process_options.py's
clients: A has 3 sequences of 6 real targets, B 1 sequence of 1)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fedlm import experiment
from fedlm.fl import process as fl_process
from fedlm.model.metrics import MaskedCrossEntropy
from tests.conftest import compose_config
from tests.fl.test_process_options import CLIENTS, SEQ, WEIGHTS, delta, keras_model, norm, tff_context  # noqa: F401


@pytest.fixture(scope="module")
def start() -> list[np.ndarray]:
    tf.keras.utils.set_random_seed(0)
    return keras_model().get_weights()


@pytest.fixture(scope="module")
def gradient():
    """(weights, batch) -> the gradient of the batch's masked cross-entropy at those weights, as numpy arrays."""
    model, loss = keras_model(), MaskedCrossEntropy()

    def grad(weights: list[np.ndarray], batch) -> list[np.ndarray]:
        model.set_weights(weights)
        x, y = batch
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return [tf.convert_to_tensor(g).numpy() for g in tape.gradient(value, model.trainable_weights)]

    return grad


def rounds(start, overrides: list[str], n: int) -> list[list[np.ndarray]]:
    """Server weights after each of `n` rounds of clients A and B from `start`, server SGD at 1.0."""
    import tensorflow_federated as tff

    cfg = compose_config(["server_optimizer=sgd", "clients_per_round=2", f"rounds={n}", *overrides])
    process = experiment.build_learning_process(cfg, fl_process.build_model_fn(keras_model, SEQ))
    template = keras_model()
    template.set_weights(start)
    state = process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights.from_model(template))
    out = []
    for _ in range(n):
        state = process.next(state, [CLIENTS["A"], CLIENTS["B"]]).state
        out.append([np.asarray(w) for w in process.get_model_weights(state).trainable])
    return out


def weighted_mean(per_client: dict[str, list[np.ndarray]], weighting: str) -> list[np.ndarray]:
    wa, wb = WEIGHTS[weighting]
    return [(wa * a + wb * b) / (wa + wb) for a, b in zip(per_client["A"], per_client["B"])]


def mean_gradient(gradient, weights, client: str) -> list[np.ndarray]:
    """A client's gradient: the mean over its batches (each of one sequence, so equally weighted by examples and,
    within a client, by tokens too)."""
    grads = [gradient(weights, batch) for batch in CLIENTS[client]]
    return [np.mean(parts, axis=0) for parts in zip(*grads)]


@pytest.mark.parametrize("weighting", list(WEIGHTS))
def test_fedsgd_steps_the_server_along_the_weighted_mean_gradient(start, gradient, weighting):
    """w1 = w0 - server_lr * sum_c p_c g_c(w0): no client step (the client learning rate plays no part)."""
    (got,) = rounds(start, ["algorithm=fedsgd", f"client_weighting={weighting}", "optimizer.learning_rate=7.0"], 1)
    mean = weighted_mean({c: mean_gradient(gradient, start, c) for c in CLIENTS}, weighting)
    for g, s, m in zip(got, start, mean):
        np.testing.assert_allclose(g, s - 1.0 * m, rtol=1e-4, atol=1e-6)


def test_fedsgd_with_dp_clips_the_mean_gradient(start):
    """aggregator=dp (noise 0): TFF's adaptive clip starts at 0.1, the server step is at most that long."""
    plain = delta(rounds(start, ["algorithm=fedsgd", "client_weighting=uniform"], 1)[0], start)
    assert norm(plain) > 0.2  # so the clip binds
    dp = ["algorithm=fedsgd", "client_weighting=uniform", "aggregator=dp", "aggregator.noise_multiplier=0.0"]
    assert 0 < norm(delta(rounds(start, dp, 1)[0], start)) <= 0.1 + 1e-6


@pytest.mark.parametrize("weighting", ["num_examples", "uniform"])
def test_mime_lite_client_steps_use_the_servers_frozen_momentum(start, gradient, weighting):
    """Client SGD with momentum m at rate lr, its momentum the server's and frozen: each step is
    w -= lr * (m * a + g(w)). The server: w -= mean of the client deltas (server SGD 1.0), then a = m * a + the
    weighted mean of the clients' full-batch gradients at the round's server model. Two rounds: in the first a = 0
    (plain SGD steps), the second uses the momentum the first one's gradients made."""
    lr, m = 0.1, 0.9
    overrides = ["algorithm=mime_lite", f"client_weighting={weighting}", "optimizer=sgdm"]
    got = rounds(start, [*overrides, f"optimizer.learning_rate={lr}", f"optimizer.momentum={m}"], 2)

    server, momentum = start, [np.zeros_like(w) for w in start]
    for round_weights in got:
        deltas, full = {}, {}
        for c in CLIENTS:
            w = server
            for batch in CLIENTS[c]:
                w = [wi - lr * (m * a + g) for wi, a, g in zip(w, momentum, gradient(w, batch))]
            deltas[c] = [s - wi for s, wi in zip(server, w)]
            full[c] = mean_gradient(gradient, server, c)
        server = [s - d for s, d in zip(server, weighted_mean(deltas, weighting))]
        momentum = [m * a + g for a, g in zip(momentum, weighted_mean(full, weighting))]
        for g, want in zip(round_weights, server):
            np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)
    assert norm(momentum) > 0 and norm(delta(got[1], got[0])) > 0


@pytest.mark.parametrize("weighting", ["num_examples", "uniform"])
def test_scheduled_mime_lite_trains_and_reports_each_rounds_client_rate(start, weighting):
    """A client schedule with MimeLite (TFF's build_mime_lite_with_optimizer_schedule): the rate in the shared
    optimizer state is the schedule's, reported as fedlm's client_learning_rate; round 1 is the unscheduled round."""
    from tests.fl.test_process_options import scheduled_rounds

    decay = ["schedule=exponential", "schedule.decay_rate=0.25", "schedule.decay_rounds=1"]
    common = ["algorithm=mime_lite", "optimizer=sgdm", "optimizer.learning_rate=0.1", f"client_weighting={weighting}"]
    got = scheduled_rounds(start, ["A", "B"], [*common, *decay], rounds=2)
    assert [m["client_work/client_learning_rate"] for _, m in got] == pytest.approx([0.1, 0.025])
    (plain,) = rounds(start, common, 1)
    for s, p in zip(got[0][0], plain):
        np.testing.assert_allclose(s, p, rtol=1e-5, atol=1e-7)
