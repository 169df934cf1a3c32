"""FastLSTM against the stock Keras LSTM: same outputs, same gradients, interchangeable weights and files (as
tests/model/test_gru.py checks FastGRU)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fedlm import vocab
from fedlm.model import lstm
from fedlm.model.lstm import FastLSTM
from tests.model.test_gru import BATCH, EMBED, STEPS, UNITS, VOCAB, char_rnn, loss_and_grads, rel_err, tokens


def model(cls: type, layers: int = 1) -> tf.keras.Model:
    """The project's model shape with `layers` stacked LSTMs of class `cls`."""
    return tf.keras.Sequential(
        [
            tf.keras.layers.InputLayer(input_shape=(None,), dtype=tf.int32),
            tf.keras.layers.Embedding(VOCAB, EMBED),
            *(cls(UNITS, return_sequences=True) for _ in range(layers)),
            tf.keras.layers.Dense(VOCAB),
        ]
    )


def pair(layers: int = 1) -> tuple[tf.keras.Model, tf.keras.Model]:
    """A stock and a fast model holding the same (random: biases non-zero) weights, `layers` LSTMs deep."""
    stock = model(tf.keras.layers.LSTM, layers)
    rng = np.random.default_rng(0)
    stock.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in stock.get_weights()])
    fast = model(FastLSTM, layers)
    fast.set_weights(stock.get_weights())
    return stock, fast


@pytest.fixture
def fast_calls(monkeypatch) -> list[int]:
    """Counts calls of the fast kernel, so a silent fallback to the stock path cannot pass for it."""
    calls, real = [], lstm._lstm_sequence
    monkeypatch.setattr(lstm, "_lstm_sequence", lambda *args: calls.append(1) or real(*args))
    return calls


@pytest.mark.parametrize("layers", [1, 2])
def test_outputs_match_stock(fast_calls, layers):
    stock, fast = pair(layers)
    fast_calls.clear()  # building the model ran the fast path; now check the call does
    x = tokens()
    assert rel_err(fast(x), stock(x)) < 1e-5 and len(fast_calls) == layers


def test_last_output_and_both_states_match_stock_with_their_gradients(fast_calls):
    """return_state: [output, h, c]; the gradient reaches the weights through the final cell state too."""
    seqs = tf.random.stateless_normal([BATCH, STEPS, EMBED], seed=[7, 8])
    stock = tf.keras.layers.LSTM(UNITS, return_sequences=False, return_state=True)
    fast = FastLSTM(UNITS, return_sequences=False, return_state=True)
    stock.build(seqs.shape)
    rng = np.random.default_rng(1)
    stock.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in stock.get_weights()])
    fast.build(seqs.shape)
    fast.set_weights(stock.get_weights())
    weights = tf.random.stateless_normal([3, UNITS], seed=[9, 10])
    results = []
    for layer in (stock, fast):
        with tf.GradientTape() as tape:
            tape.watch(seqs)
            out = layer(seqs)
            loss = sum(tf.reduce_sum(o * w) for o, w in zip(out, tf.unstack(weights)))
        results.append((out, tape.gradient(loss, [seqs, *layer.trainable_variables])))
    (want, want_grads), (got, got_grads) = results
    assert len(got) == len(want) == 3 and all(rel_err(g, w) < 1e-5 for g, w in zip(got, want)) and fast_calls
    assert all(rel_err(g, w) < 1e-5 for g, w in zip(got_grads, want_grads))


def test_layer_gradients_match_stock_for_weights_and_inputs(fast_calls):
    stock, fast = pair()
    fast_calls.clear()
    seqs = tf.random.stateless_normal([BATCH, STEPS, EMBED], seed=[1, 2])
    target = tf.random.stateless_normal([BATCH, STEPS, UNITS], seed=[3, 4])
    grads = []
    for layer in (stock.layers[1], fast.layers[1]):
        with tf.GradientTape() as tape:
            tape.watch(seqs)
            loss = tf.reduce_sum(layer(seqs) * target)
        grads.append(tape.gradient(loss, [seqs, *layer.trainable_variables]))
    assert len(grads[1]) == 4 and fast_calls
    for got, want in zip(grads[1], grads[0]):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("layers", [1, 2])
def test_model_gradients_match_stock(fast_calls, layers):
    stock, fast = pair(layers)
    fast_calls.clear()
    x, y = tokens(), tokens(seed=2)
    (loss_s, grads_s), (loss_f, grads_f) = loss_and_grads(stock, x, y), loss_and_grads(fast, x, y)
    assert rel_err(loss_f, loss_s) < 1e-5
    assert len(grads_f) == len(grads_s) == 3 + 3 * layers and len(fast_calls) == layers
    for got, want in zip(grads_f, grads_s):
        assert rel_err(tf.convert_to_tensor(got), tf.convert_to_tensor(want)) < 1e-5


def test_same_weight_names_shapes_and_order():
    tf.keras.backend.clear_session()
    stock = model(tf.keras.layers.LSTM, 2)
    tf.keras.backend.clear_session()
    fast = model(FastLSTM, 2)
    assert [(w.name, w.shape) for w in fast.weights] == [(w.name, w.shape) for w in stock.weights]


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("name", ["fast.h5", "fast_savedmodel", "fast.keras"])
def test_saved_fast_model_loads_into_stock(tmp_path, name):
    stock, fast = pair()
    x = tokens()
    path = str(tmp_path / name)
    tf.keras.models.save_model(fast, path)
    reloaded = tf.keras.models.load_model(path, compile=False)  # FastLSTM is registered: loads as itself
    assert isinstance(reloaded.layers[1], FastLSTM) and rel_err(reloaded(x), fast(x)) < 1e-5
    fresh = char_rnn(tf.keras.layers.LSTM(UNITS, return_sequences=True))
    fresh.set_weights(reloaded.get_weights())  # as fedlm.model.starting_weights.load_keras_file does
    assert rel_err(fresh(x), stock(x)) < 1e-5


def test_config_round_trip():
    layer = FastLSTM(UNITS, name="l", return_sequences=True)
    again = FastLSTM.from_config(layer.get_config())
    assert again.get_config() == layer.get_config() and again.return_sequences
    assert tf.keras.utils.get_registered_object("fedlm>FastLSTM") is FastLSTM


def test_train_step_in_tf_function_with_unknown_batch_and_time(fast_calls):
    stock, fast = pair(2)
    fast_calls.clear()
    spec = tf.TensorSpec([None, None], tf.int32)
    steps = {
        m: tf.function(lambda x, y, m=m: loss_and_grads(m, x, y), input_signature=[spec, spec]) for m in (stock, fast)
    }
    for batch, steps_len in [(BATCH, STEPS), (1, 4)]:
        x, y = tokens(batch, steps_len), tokens(batch, steps_len, seed=3)
        (loss_s, grads_s), (loss_f, grads_f) = steps[stock](x, y), steps[fast](x, y)
        assert rel_err(loss_f, loss_s) < 1e-5
        for got, want in zip(grads_f, grads_s):
            assert rel_err(tf.convert_to_tensor(got), tf.convert_to_tensor(want)) < 1e-5
    assert fast_calls


def test_masked_and_stateful_calls_use_the_stock_path(fast_calls):
    stock, fast = pair()
    gen = tf.keras.Sequential(
        [
            tf.keras.layers.InputLayer(input_shape=(None,), batch_size=1, dtype=tf.int32),
            tf.keras.layers.Embedding(VOCAB, EMBED),
            FastLSTM(UNITS, return_sequences=True, stateful=True),
            tf.keras.layers.Dense(VOCAB),
        ]
    )
    gen.set_weights(fast.get_weights())
    fast_calls.clear()  # building `pair` ran the fast path
    seqs = tf.random.stateless_normal([BATCH, STEPS, EMBED], seed=[5, 6])
    mask = tf.sequence_mask([STEPS, 4, 1], STEPS)
    assert rel_err(fast.layers[1](seqs, mask=mask), stock.layers[1](seqs, mask=mask)) < 1e-5
    x = tokens(1, STEPS)
    stepwise = [gen(x[:, t : t + 1]) for t in range(STEPS)]
    assert rel_err(tf.concat(stepwise, axis=1), stock(x)) < 1e-5
    assert not fast_calls


def test_federated_round_matches_stock_in_tff(fast_calls):
    """One FedAvg round in TFF's graph-mode client update (C++ worker), 2 x LSTM: same server weights from the
    same start."""
    import tensorflow_federated as tff

    from fedlm import experiment
    from fedlm.fl import process as fl_process
    from fedlm.fl import runtime
    from fedlm.model import char_rnn as model_lib
    from tests.conftest import compose_config

    seq = 7
    rng = np.random.default_rng(4)
    clients = [  # two clients: 3 and 2 batches, the last one smaller, as fedlm's client datasets
        tf.data.Dataset.from_tensor_slices(
            tuple(rng.integers(0, vocab.VOCAB_SIZE, (2, n, seq)).astype(np.int32))
        ).batch(4)
        for n in (10, 6)
    ]
    sizes = model_lib.ModelSizes(5, UNITS, "lstm", 2)
    start = sizes.build()
    start.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in start.get_weights()])
    initial = tff.learning.models.ModelWeights.from_model(start)
    deltas = {}
    with runtime.tff_context():
        for impl in ("keras", "fast"):
            fast_calls.clear()
            model_fn = fl_process.build_model_fn(lambda impl=impl: sizes.build(impl, random_init=False), seq)
            # FedAvg weighted by examples, mean aggregation, client SGD 0.5, server SGD 1.0: as fedlm.run builds it.
            cfg = compose_config(["clients_per_round=2", "optimizer=sgd", "server_optimizer=sgd"])
            process = experiment.build_learning_process(cfg, model_fn)
            assert bool(fast_calls) == (impl == "fast")  # the fast kernel was traced into the client update
            state = process.set_model_weights(process.initialize(), initial)
            result = process.next(state, clients)
            assert result.metrics["client_work"]["train"]["num_examples"] == 16
            new = process.get_model_weights(result.state).trainable
            deltas[impl] = [np.asarray(n) - np.asarray(s) for n, s in zip(new, initial.trainable)]
    assert len(deltas["fast"]) == 9 and all(np.abs(d).max() > 1e-3 for d in deltas["keras"])  # every weight moved
    for got, want in zip(deltas["fast"], deltas["keras"]):
        assert rel_err(got, want) < 1e-4
