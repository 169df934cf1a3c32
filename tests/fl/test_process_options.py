"""The learning process on a tiny model, built as `fedlm.run` builds it: each client weighting (fl/weighting.py),
aggregator (fl/aggregators.py) and algorithm (fl/algorithms.py) does what it says."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from fedlm import experiment, vocab
from fedlm.fl import algorithms, runtime
from fedlm.fl import process as fl_process
from fedlm.model import char_rnn
from tests.conftest import compose_config

SEQ = 6


@pytest.fixture(scope="module", autouse=True)
def tff_context():
    with runtime.tff_context():
        yield


def keras_model() -> tf.keras.Model:
    return char_rnn.build_model(4, 8)


def client(sequences: int, real_tokens_per_sequence: int, seed: int) -> tf.data.Dataset:
    """`sequences` examples in batches of 1, each with `real_tokens_per_sequence` real targets, the rest padding."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab.PAD_ID, (sequences, SEQ)).astype(np.int32)
    y = rng.integers(0, vocab.PAD_ID, (sequences, SEQ)).astype(np.int32)
    y[:, real_tokens_per_sequence:] = vocab.PAD_ID
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(1)


# A: 3 sequences, 18 real tokens. B: 1 sequence, 1 real token. Weights A:B -- examples 3:1, tokens 18:1, uniform 1:1.
CLIENTS = {"A": client(3, SEQ, seed=1), "B": client(1, 1, seed=2)}
WEIGHTS = {"num_examples": (3, 1), "num_tokens": (18, 1), "uniform": (1, 1)}


@pytest.fixture(scope="module")
def start() -> list[np.ndarray]:
    tf.keras.utils.set_random_seed(0)
    return keras_model().get_weights()


@functools.cache
def plain_process(overrides: tuple[str, ...]):
    """The process of client SGD 0.1, server SGD 1.0 (the new model is the mean) and `overrides`; built once per
    module (building is most of a test's time)."""
    cfg = compose_config(
        ["optimizer=sgd", "optimizer.learning_rate=0.1", "server_optimizer=sgd", "clients_per_round=2", *overrides]
    )
    return experiment.build_learning_process(cfg, fl_process.build_model_fn(keras_model, SEQ))


def one_round(start, clients: list[str], overrides: list[str], client_rate: float | None = None) -> list[np.ndarray]:
    """Server weights after one round from `start`; `client_rate`: the client optimizer's rate set through TFF's
    hparams, as if configured."""
    import tensorflow_federated as tff

    process = plain_process(tuple(overrides))
    template = keras_model()
    template.set_weights(start)
    state = process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights.from_model(template))
    if client_rate is not None:
        hparams = process.get_hparams(state)
        hparams["client_work"]["learning_rate"] = np.float32(client_rate)
        state = process.set_hparams(state, hparams)
    state = process.next(state, [CLIENTS[c] for c in clients]).state
    return [np.asarray(w) for w in process.get_model_weights(state).trainable]


def delta(after, start) -> list[np.ndarray]:
    return [a - s for a, s in zip(after, start)]


def norm(deltas) -> float:
    return float(np.sqrt(sum(np.sum(d * d) for d in deltas)))


@pytest.fixture(scope="module")
def single_client_deltas(start):
    return {c: delta(one_round(start, [c], []), start) for c in CLIENTS}


@pytest.mark.parametrize("weighting", list(WEIGHTS))
def test_client_weighting_is_the_weighted_mean_of_client_updates(start, single_client_deltas, weighting):
    got = delta(one_round(start, ["A", "B"], [f"client_weighting={weighting}"]), start)
    wa, wb = WEIGHTS[weighting]
    want = [(wa * a + wb * b) / (wa + wb) for a, b in zip(single_client_deltas["A"], single_client_deltas["B"])]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7)


def test_fedprox_keeps_clients_closer_to_the_server_model(start, single_client_deltas):
    prox = delta(one_round(start, ["A"], ["algorithm=fedprox", "algorithm.proximal_strength=5.0"]), start)
    assert 0 < norm(prox) < 0.9 * norm(single_client_deltas["A"])
    weak = delta(one_round(start, ["A"], ["algorithm=fedprox", "algorithm.proximal_strength=1e-6"]), start)
    for w, a in zip(weak, single_client_deltas["A"]):  # proximal_strength -> 0 is FedAvg
        np.testing.assert_allclose(w, a, rtol=1e-4, atol=1e-7)


def test_tff_fed_prox_pushes_clients_away_which_is_why_fedlm_does_not_use_it(start, single_client_deltas):
    """Documents the TFF 0.87 bug behind ProximalOptimizer: if this starts failing, TFF was fixed."""
    import tensorflow_federated as tff

    process = tff.learning.algorithms.build_weighted_fed_prox(
        fl_process.build_model_fn(keras_model, SEQ),
        5.0,
        tff.learning.optimizers.build_sgdm(0.1),
        tff.learning.optimizers.build_sgdm(1.0),
    )
    template = keras_model()
    template.set_weights(start)
    state = process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights.from_model(template))
    state = process.next(state, [CLIENTS["A"]]).state
    tff_prox = delta([np.asarray(w) for w in process.get_model_weights(state).trainable], start)
    assert norm(tff_prox) > norm(single_client_deltas["A"])


def test_proximal_optimizer_pulls_back_towards_the_start():
    import tensorflow_federated as tff

    opt = algorithms.ProximalOptimizer(tff.learning.optimizers.build_sgdm(0.1), proximal_strength=2.0)
    w0 = (tf.constant([1.0, -1.0]),)
    state = opt.initialize((tf.TensorSpec([2], tf.float32),))
    state, w1 = opt.next(state, w0, (tf.constant([1.0, 1.0]),))  # first step: plain SGD, w_start = w0
    np.testing.assert_allclose(w1[0], [0.9, -1.1], rtol=1e-6)
    state, w2 = opt.next(state, w1, (tf.zeros([2]),))  # no loss gradient: only the pull to w0
    np.testing.assert_allclose(w2[0], [0.9 + 0.1 * 2.0 * 0.1, -1.1 - 0.1 * 2.0 * -0.1], rtol=1e-6)
    assert opt.get_hparams(state)["learning_rate"] == pytest.approx(0.1)


def test_dp_aggregator_clips_the_update(start):
    """TFF's adaptive DP aggregator starts at an L2 clip of 0.1: without noise the mean update is within it."""
    fast = ["optimizer.learning_rate=1.0", "client_weighting=uniform"]
    assert norm(delta(one_round(start, ["A", "B"], fast), start)) > 0.2  # so the clip binds
    dp = delta(one_round(start, ["A", "B"], [*fast, "aggregator=dp", "aggregator.noise_multiplier=0.0"]), start)
    assert 0 < norm(dp) <= 0.1 + 1e-6


def test_compression_aggregator_runs_and_averages(start, single_client_deltas):
    got = delta(one_round(start, ["A", "B"], ["aggregator=compression", "aggregator.clipping=false"]), start)
    wa, wb = WEIGHTS["num_examples"]
    want = [(wa * a + wb * b) / (wa + wb) for a, b in zip(single_client_deltas["A"], single_client_deltas["B"])]
    # The tiny model's tensors are below TFF's 20,000-value quantization threshold: the mean is exact.
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("side", ["client", "server"])
def test_tff_adafactor_fails_inside_fed_avg_which_is_why_config_refuses_it(start, side):
    """Documents the TFF 0.87 bug behind checks.validate's adafactor refusal: if this fails, TFF was fixed."""
    import tensorflow_federated as tff

    adafactor, sgd = tff.learning.optimizers.build_adafactor(0.01), tff.learning.optimizers.build_sgdm(0.1)
    client, server = (adafactor, sgd) if side == "client" else (sgd, adafactor)
    with pytest.raises((KeyError, TypeError), match="steps|int32"):
        process = tff.learning.algorithms.build_weighted_fed_avg(
            fl_process.build_model_fn(keras_model, SEQ), client, server
        )
        process.next(process.initialize(), [CLIENTS["A"]])


# ---- schedules: a round trains at its scheduled rate (fedlm/fl/optimizers.py) -------------------------------


def scheduled_rounds(start, clients: list[str], overrides: list[str], rounds: int) -> list[tuple[list, dict]]:
    """(server weights, flat metrics) after each of `rounds` rounds from `start`, as `fedlm.run` starts the process."""
    from fedlm.utils import flatten

    cfg = compose_config(["server_optimizer=sgd", f"rounds={rounds}", "clients_per_round=2", *overrides])
    process = experiment.build_learning_process(cfg, fl_process.build_model_fn(keras_model, SEQ))
    template = keras_model()
    template.set_weights(start)
    started = experiment.start_process(cfg, process, template)
    state, out = started.initialize(), []
    for _ in range(rounds):
        output = started.next(state, [CLIENTS[c] for c in clients])
        state = output.state
        weights = [np.asarray(w) for w in process.get_model_weights(state).trainable]
        out.append((weights, flatten(output.metrics)))
    return out


def full_weights(start, trainable: list[np.ndarray]) -> list[np.ndarray]:
    """The tiny model has no non-trainable weights: its trainable ones are all of them."""
    assert len(trainable) == len(start)
    return trainable


# Client SGD at 0.1 decayed to a quarter every round: rounds 1, 2 train at 0.1, 0.025.
CLIENT_DECAY = ["schedule=exponential", "schedule.decay_rate=0.25", "schedule.decay_rounds=1"]


@pytest.mark.parametrize(
    "extra",
    [[], ["algorithm=fedprox"], ["client_weighting=uniform"], ["client_weighting=num_tokens"], ["optimizer=rmsprop"]],
    ids=lambda e: e[0].split("=")[1] if e else "fedavg",
)
def test_each_round_trains_at_the_scheduled_client_rate(start, extra):
    """Round r of a scheduled process is a round of the plain process at the constant rate of round r, from the
    same weights, with every weighting and algorithm; the round reports that rate."""
    got = scheduled_rounds(start, ["A", "B"], ["optimizer.learning_rate=0.1", *CLIENT_DECAY, *extra], rounds=2)
    weights = start
    for (scheduled, metrics), rate in zip(got, [0.1, 0.025]):
        assert metrics["client_work/client_learning_rate"] == pytest.approx(rate)
        plain = one_round(weights, ["A", "B"], extra, client_rate=rate)
        for s, p in zip(scheduled, plain):
            np.testing.assert_allclose(s, p, rtol=1e-5, atol=1e-7)
        weights = full_weights(start, scheduled)
    assert "finalizer/learning_rate" not in got[0][1]  # the server's rate is constant: a param, not a metric


@pytest.mark.parametrize("server", ["sgd", "adam"])
def test_each_round_applies_the_update_at_the_scheduled_server_rate(start, server):
    """A server warm-up of 2 rounds: the server's rate is 1/2, then 2/2 of its learning rate, as if set by hand before
    each round (TFF's set_hparams on the plain process); the rounds report it."""
    import tensorflow_federated as tff

    base = 1.0 if server == "sgd" else 0.01
    common = ["optimizer.learning_rate=0.1", f"server_optimizer={server}", f"server_optimizer.learning_rate={base}"]
    got = scheduled_rounds(start, ["A"], [*common, "server_schedule=constant", "server_schedule.warmup_rounds=2"], 2)

    cfg = compose_config(["clients_per_round=2", *common])
    process = experiment.build_learning_process(cfg, fl_process.build_model_fn(keras_model, SEQ))
    template = keras_model()
    template.set_weights(start)
    state = process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights.from_model(template))
    for (scheduled, metrics), rate in zip(got, [base / 2, base]):
        assert metrics["finalizer/learning_rate"] == pytest.approx(rate)
        assert "client_work/client_learning_rate" not in metrics
        hparams = process.get_hparams(state)
        hparams["finalizer"]["learning_rate"] = np.float32(rate)
        state = process.next(process.set_hparams(state, hparams), [CLIENTS["A"]]).state
        plain = [np.asarray(w) for w in process.get_model_weights(state).trainable]
        for s, p in zip(scheduled, plain):
            np.testing.assert_allclose(s, p, rtol=1e-5, atol=1e-7)


def test_a_resumed_run_continues_both_schedules_where_its_checkpoint_left_them(start, tmp_path):
    """The round counters are in the server state: saved, loaded and continued, the rates go on from round 2."""
    import tensorflow_federated as tff

    from fedlm.utils import run_sync

    overrides = ["rounds=3", *CLIENT_DECAY, "server_schedule=inverse_sqrt", "clients_per_round=2"]
    cfg = compose_config(overrides)
    process = experiment.build_learning_process(cfg, fl_process.build_model_fn(keras_model, SEQ))
    template = keras_model()
    template.set_weights(start)
    started = experiment.start_process(cfg, process, template)
    first = started.next(started.initialize(), [CLIENTS["A"]])
    files = tff.program.FileProgramStateManager(str(tmp_path))
    run_sync(files.save(first.state, 1))
    loaded = run_sync(files.load(1, started.initialize()))
    second = started.next(loaded, [CLIENTS["A"]]).metrics
    assert second["client_work"]["client_learning_rate"] == pytest.approx(0.5 * 0.25)  # optimizer=sgd's 0.5
    assert second["finalizer"]["learning_rate"] == pytest.approx(1.0 / np.sqrt(2))  # server_optimizer=sgd's 1.0


def dp_process(seed: int):
    cfg = compose_config(
        [
            "optimizer=sgd",
            "optimizer.learning_rate=1.0",
            "server_optimizer=sgd",
            "clients_per_round=2",
            "client_weighting=uniform",
            "aggregator=dp",
            "aggregator.noise_multiplier=0.1",
            f"seed={seed}",
        ]
    )
    return experiment.build_learning_process(cfg, fl_process.build_model_fn(keras_model, SEQ))


def dp_start_state(process, start):
    import tensorflow_federated as tff

    template = keras_model()
    template.set_weights(start)
    return process.set_model_weights(process.initialize(), tff.learning.models.ModelWeights.from_model(template))


def weights(process, state) -> list[np.ndarray]:
    return [np.asarray(w) for w in process.get_model_weights(state).trainable]


def test_dp_runs_reproduce_and_resume_to_the_uninterrupted_result(start, tmp_path):
    """The DP noise is a function of (seed, round): two runs of one seed train the same weights, another seed other
    ones, and a process built anew from round 1's checkpoint (a resumed run) trains round 2 as the first did."""
    import tensorflow_federated as tff

    from fedlm.utils import run_sync

    clients = [CLIENTS["A"], CLIENTS["B"]]
    process = dp_process(seed=5)
    round1 = process.next(dp_start_state(process, start), clients).state
    round2 = process.next(round1, clients).state

    again = dp_process(seed=5)
    state = again.next(again.next(dp_start_state(again, start), clients).state, clients).state
    for a, b in zip(weights(again, state), weights(process, round2)):
        np.testing.assert_array_equal(a, b)
    other = dp_process(seed=6)
    state = other.next(other.next(dp_start_state(other, start), clients).state, clients).state
    assert norm(delta(weights(other, state), weights(process, round2))) > 1e-4

    files = tff.program.FileProgramStateManager(str(tmp_path))
    run_sync(files.save(round1, 1))
    resumed = dp_process(seed=5)
    saved = run_sync(files.load(1, resumed.initialize()))
    state = resumed.next(saved, clients).state
    for a, b in zip(weights(resumed, state), weights(process, round2)):
        np.testing.assert_array_equal(a, b)


def test_seeded_noise_is_gaussian_of_the_querys_stddev_and_new_every_round():
    import tensorflow_privacy as tfp

    from fedlm.fl.aggregators import SeededNoiseQuery

    query = SeededNoiseQuery(tfp.GaussianSumQuery(l2_norm_clip=1.0, stddev=2.0), seed=3)
    zeros = tf.zeros([20_000])
    state = query.initial_global_state()
    first, next_state, _ = query.get_noised_result(zeros, state)
    second, _, _ = query.get_noised_result(zeros, next_state)
    np.testing.assert_array_equal(first, query.get_noised_result(zeros, state)[0])  # the same round: the same noise
    assert float(np.corrcoef(first, second)[0, 1]) < 0.05  # the next round: new noise
    assert float(np.std(first)) == pytest.approx(2.0, rel=0.03) and abs(float(np.mean(first))) < 0.05
