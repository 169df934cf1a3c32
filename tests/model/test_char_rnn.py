"""The char-RNN for every cell and depth: sizes read back from weights, plain Keras files, model.init, text
generation, the MLflow model; and `model.init=random`'s seeded start."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import tensorflow as tf

from fedlm import vocab
from fedlm.model import char_rnn, generator, pretrain, starting_weights
from tests.conftest import compose_config

SHAPES = [char_rnn.ModelSizes(4, 8, cell, layers) for cell in ("gru", "lstm") for layers in (1, 3)]


def random_model(sizes: char_rnn.ModelSizes, implementation: str = "fast") -> tf.keras.Model:
    m = sizes.build(implementation)
    rng = np.random.default_rng(0)
    m.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32) for w in m.get_weights()])
    return m


@pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: f"{s.cell}x{s.layers}")
def test_sizes_cell_and_depth_are_read_back_from_the_weights(sizes):
    import tensorflow_federated as tff

    m = random_model(sizes)
    assert [tuple(w.shape) for w in m.get_weights()] == sizes.weight_shapes()
    assert char_rnn.sizes_from_weights(m.get_weights()) == sizes
    assert char_rnn.sizes_from_weights(tff.learning.models.ModelWeights.from_model(m)) == sizes


def test_weights_of_no_char_rnn_are_refused():
    with pytest.raises(ValueError, match="are not a char-RNN's"):
        char_rnn.sizes_from_weights([np.zeros((88, 4)), np.zeros((4, 8)), np.zeros((8, 8)), np.zeros((8,))] * 2)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: f"{s.cell}x{s.layers}")
def test_saved_as_plain_keras_and_read_back_as_model_init(tmp_path, sizes):
    fast = random_model(sizes, "fast")
    path = char_rnn.save_model(fast, str(tmp_path / "m.h5"))
    plain = tf.keras.models.load_model(path, compile=False)  # no fedlm class needed
    stock = {"gru": tf.keras.layers.GRU, "lstm": tf.keras.layers.LSTM}[sizes.cell]
    assert [type(layer) for layer in plain.layers[1:-1]] == [stock] * sizes.layers
    x = tf.constant(vocab.encode("Now is the winter")[None, :])
    np.testing.assert_allclose(plain(x), fast(x), rtol=1e-5, atol=1e-6)
    init = starting_weights.load_keras_file(path, "model.init", sizes)
    assert init.sizes == sizes and all(np.array_equal(a, b) for a, b in zip(init.weights, fast.get_weights()))


@pytest.mark.parametrize("sizes", SHAPES, ids=lambda s: f"{s.cell}x{s.layers}")
def test_generation_runs_the_batch1_stateful_copy_as_the_full_model(sizes):
    m = random_model(sizes, "keras")
    gen = generator.Generator(m.get_weights())
    assert all(layer.stateful for layer in gen.model.layers[1:-1])
    ids = list(vocab.encode("Hi "))
    for c in gen.sample("Hi ", 6, 0.0, rng=None):  # greedy: each character the full model's argmax so far
        assert vocab.CHAR_TO_ID[c] == int(np.argmax(m(np.array([ids]))[0, -1, : vocab.PAD_ID]))
        ids.append(vocab.CHAR_TO_ID[c])


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_the_tutorial_format_extends_to_any_depth(tmp_path):
    """The 86-character import touches only the embedding and the output layer, whatever lies between."""
    sizes = char_rnn.ModelSizes(4, 8, "lstm", 2)
    m = tf.keras.Sequential(
        [
            tf.keras.layers.Embedding(86, 4, batch_input_shape=[1, None]),
            *(tf.keras.layers.LSTM(8, return_sequences=True, stateful=True) for _ in range(2)),
            tf.keras.layers.Dense(86),
        ]
    )
    path = str(tmp_path / "tutorial_lstm.kerasmodel")
    tf.keras.models.save_model(m, path, include_optimizer=False, save_format="h5")
    init = starting_weights.load_keras_file(path, "model.init", sizes)
    adapted = sizes.build()
    adapted.set_weights(init.weights)
    ids = vocab.encode("My lord, ")[None, :]
    want, got = tf.nn.log_softmax(m(ids)), tf.nn.log_softmax(adapted(ids))
    np.testing.assert_allclose(got[..., : vocab.PAD_ID], want, atol=1e-5)


def test_the_mlflow_model_of_an_lstm_stack_loads_back(tmp_path):
    from fedlm.tracking import artifacts, store

    store.get_or_create_experiment("lstm_model")
    m = random_model(char_rnn.ModelSizes(4, 8, "lstm", 2), "keras")
    with mlflow.start_run() as run:
        artifacts.log_final_model(m, str(tmp_path))
    loaded = mlflow.tensorflow.load_model(f"runs:/{run.info.run_id}/{artifacts.LOGGED_MODEL_NAME}")
    assert [type(layer) for layer in loaded.layers[1:-1]] == [tf.keras.layers.LSTM] * 2
    for a, b in zip(loaded.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_random_init_is_seeded_saved_and_named(tmp_path):
    cfg = compose_config(["model=tiny", "model.cell=lstm", "model.layers=2", "model.init=random"])
    args = (cfg.model, cfg.pretrain, cfg.data.proxy_genres)
    path, init = pretrain.load_pretrained(*args, str(tmp_path), seed=0)
    assert path.startswith(str(tmp_path / "random")) and path in init.notes[0] and "seed=0" in init.notes[0]
    assert init.sizes == char_rnn.ModelSizes(8, 16, "lstm", 2)
    saved = tf.keras.models.load_model(path, compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(saved, init.weights))  # the tag names the start's own file
    # The LSTMs' forget-gate biases start at 1 (Keras's unit_forget_bias), the rest of the biases at 0.
    assert np.all(init.weights[3][16:32] == 1) and not init.weights[3][:16].any()

    tf.random.uniform([3])  # whatever drew random numbers before, the same seed makes the same start
    again_path, again = pretrain.load_pretrained(*args, str(tmp_path / "elsewhere"), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again.weights, init.weights))
    other_path, other = pretrain.load_pretrained(*args, str(tmp_path), seed=1)
    assert other_path != path and not np.allclose(other.weights[1], init.weights[1])
    assert pretrain.load_pretrained(*args, str(tmp_path), seed=0)[0] == path  # made once, then read


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_pretraining_a_stacked_lstm_caches_it_apart_from_the_gru(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Now is the winter of our discontent made glorious summer by this sun of York. " * 20)
    common = ["model=tiny", f"pretrain.corpus={corpus}", "pretrain.steps=2", "pretrain.batch_size=2"]
    lstm = compose_config([*common, "pretrain.seq_length=10", "model.cell=lstm", "model.layers=2"])
    gru = compose_config([*common, "pretrain.seq_length=10"])
    args = (lstm.pretrain, lstm.data.proxy_genres, str(tmp_path))
    assert pretrain.cache_path(lstm.model, *args) != pretrain.cache_path(gru.model, *args)
    path, init = pretrain.load_pretrained(lstm.model, *args)
    assert path == pretrain.cache_path(lstm.model, *args) and init.sizes == char_rnn.ModelSizes(8, 16, "lstm", 2)
    cached = pretrain.read_cached_model(path, lstm.model)  # checked against the LSTM stack's shapes
    assert all(np.array_equal(a, b) for a, b in zip(cached, init.weights))
    with pytest.raises(ValueError, match="weight shapes"):
        pretrain.read_cached_model(path, gru.model)
