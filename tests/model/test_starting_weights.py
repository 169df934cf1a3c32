"""`model.init=`: fedlm's own files, the TFF tutorial's published format, and every file that does not fit."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from fedlm import vocab
from fedlm.errors import ConfigError
from fedlm.model import char_rnn, metrics, starting_weights
from tests.conftest import compose_config

E, H = 8, 16  # the tutorial's structure with small sizes (its models are E=256, H=1024)


def tutorial_format_model(batch_size: int, vocab_size: int = 86) -> tf.keras.Model:
    """The tutorial's char-RNN as published (text-generation tutorial's build_model): fixed batch, stateful GRU."""
    return tf.keras.Sequential(
        [
            tf.keras.layers.Embedding(vocab_size, E, batch_input_shape=[batch_size, None]),
            tf.keras.layers.GRU(H, return_sequences=True, stateful=True, recurrent_initializer="glorot_uniform"),
            tf.keras.layers.Dense(vocab_size),
        ]
    )


def save_tutorial_format(path, batch_size: int, vocab_size: int = 86) -> str:
    """Saved as the tutorial's files: HDF5 without a .h5 name (`dickens_rnn.batch8.kerasmodel`), no optimizer."""
    m = tutorial_format_model(batch_size, vocab_size)
    tf.keras.models.save_model(m, str(path), include_optimizer=False, save_format="h5")
    return str(path)


def template() -> tf.keras.Model:
    return char_rnn.build_model(E, H)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_tutorial_format_loads_and_predicts_the_same_characters(tmp_path, batch_size):
    path = save_tutorial_format(tmp_path / f"dickens_rnn.batch{batch_size}.kerasmodel", batch_size)
    original = tf.keras.models.load_model(path, compile=False)
    init = starting_weights.load_keras_file(path, "model.init", char_rnn.ModelSizes(E, H))
    assert any("86-character" in n for n in init.notes)

    adapted = template()
    adapted.set_weights(init.weights)
    ids = vocab.encode("What of TensorFlow Federated, you ask? ")[None, :]
    want = tf.nn.log_softmax(original(np.repeat(ids, batch_size, axis=0))[:1]).numpy()
    got = tf.nn.log_softmax(adapted(ids)).numpy()
    # Same distribution over the tutorial's 86 characters; PAD and OOV get no probability and are never predicted.
    np.testing.assert_allclose(got[..., : vocab.PAD_ID], want, atol=1e-5)
    assert np.all(np.exp(got[..., vocab.PAD_ID :]) == 0)
    assert np.all(np.argmax(got, -1) < vocab.PAD_ID)
    # The rows added for an OOV input: the mean character embedding; for PAD: zeros.
    np.testing.assert_allclose(init.weights[0][vocab.OOV_ID], init.weights[0][: vocab.PAD_ID].mean(0), rtol=1e-6)
    assert not init.weights[0][vocab.PAD_ID].any()


def test_fedlm_own_file_loads_unchanged(tmp_path):
    m = template()
    path = char_rnn.save_model(m, str(tmp_path / "own.h5"))
    init = starting_weights.load_keras_file(path, "model.init", char_rnn.ModelSizes(E, H))
    assert init.notes == []
    for a, b in zip(init.weights, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_saved_with_optimizer_is_accepted_ignoring_the_optimizer(tmp_path):
    m = template()
    m.compile(optimizer="adam", loss=metrics.MaskedCrossEntropy())
    m.fit(np.zeros((2, 5), np.int32), np.ones((2, 5), np.int32), verbose=0)  # optimizer state exists now
    path = str(tmp_path / "with_optimizer.h5")
    tf.keras.models.save_model(m, path, include_optimizer=True)
    assert starting_weights.saved_with_optimizer(path)
    init = starting_weights.load_keras_file(path, "model.init", char_rnn.ModelSizes(E, H))
    assert any("optimizer" in n and "ignored" in n for n in init.notes)
    for a, b in zip(init.weights, m.get_weights()):
        np.testing.assert_array_equal(a, b)


def _not_a_keras_model(tmp_path) -> str:
    path = tmp_path / "notes.h5"
    path.write_text("not a model")
    return str(path)


def _wrong_vocabulary(tmp_path) -> str:
    return save_tutorial_format(tmp_path / "vocab50.h5", 8, vocab_size=50)


def _wrong_input_shape(tmp_path) -> str:
    m = tf.keras.Sequential([tf.keras.layers.InputLayer((5, 3)), tf.keras.layers.GRU(H), tf.keras.layers.Dense(88)])
    return char_rnn.save_model(m, str(tmp_path / "float_input.h5"))


def _wrong_sizes(tmp_path) -> str:
    return char_rnn.save_model(char_rnn.build_model(E * 2, H), str(tmp_path / "e16.h5"))


def _not_the_char_rnn(tmp_path) -> str:
    m = tf.keras.Sequential(
        [
            tf.keras.layers.InputLayer((None,), dtype=tf.int32),
            tf.keras.layers.Embedding(88, E),
            tf.keras.layers.GRU(H, return_sequences=True, reset_after=False),  # one bias, not Keras's two
            tf.keras.layers.Dense(88),
        ]
    )
    return char_rnn.save_model(m, str(tmp_path / "gru_v1.h5"))


def _other_cell_and_depth(tmp_path) -> str:
    return char_rnn.save_model(char_rnn.build_model(E, H, cell="lstm", layers=2), str(tmp_path / "lstm2.h5"))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: str(tmp / "missing.h5"), r"no such file; allowed: a Keras model file"),
        (_not_a_keras_model, r"not a Keras model .*allowed: a Keras model file"),
        (_wrong_vocabulary, r"vocabulary size 50; fits: 88 .* or 86"),
        (_wrong_input_shape, r"input shape \(None, 5, 3\); fits: \(batch, time\) of character ids"),
        (
            _wrong_sizes,
            r"Embedding 16 -> GRU 16, but the configured model is Embedding 8 -> GRU 16; set model.embedding_dim=16$",
        ),
        (
            _other_cell_and_depth,
            r"Embedding 8 -> LSTM 16 x 2, but the configured model is Embedding 8 -> GRU 16; "
            r"set model.cell=lstm model.layers=2$",
        ),
        (_not_the_char_rnn, r"weight shapes .* are not the char-RNN; allowed: .*Embedding\(V, E\) -> GRU"),
    ],
)
def test_files_that_do_not_fit_are_named_with_what_fits(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ConfigError, match=rf"model\.init='{path}': {message}"):
        starting_weights.load_keras_file(path, "model.init", char_rnn.ModelSizes(E, H))


@pytest.mark.e2e
def test_run_with_unfitting_model_init_fails_before_training(tmp_path):
    """`fedlm.run`'s own path (in-process: TensorFlow is loaded already), stopped before any TFF work."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from fedlm import run
    from tests.conftest import CONF_DIR

    path = _wrong_vocabulary(tmp_path)
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("config", ["model=tiny", f"model.init={path}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")  # as Hydra sets it for the job (the run is locked first)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it to the task
    try:
        with pytest.raises(ConfigError, match=r"model\.init=.*vocabulary size 50"):
            run.run(cfg)
    finally:
        HydraConfig.instance().cfg = None


def test_generate_from_a_tutorial_format_file(tmp_path):
    from fedlm import generate
    from fedlm.model import generator

    path = save_tutorial_format(tmp_path / "dickens_rnn.batch1.kerasmodel", 1)
    cfg = compose_config([f"model_file={path}", "length=25", "num_samples=2", "seed=3"], config_name="generate")
    texts = generate.generate(cfg)
    assert len(texts) == 2 and texts[0] != texts[1]
    for text in texts:
        assert text.startswith(generator.TUTORIAL_PROMPT) and len(text) == len(generator.TUTORIAL_PROMPT) + 25


def test_saving_prints_no_notices_that_do_not_apply(tmp_path):
    """Every run saves models: Keras's HDF5 'legacy format' warning and its 'compiled metrics have yet to be built'
    log line (for the uncompiled copies fedlm saves) would end every run's output. Both are filtered, only there."""
    import logging
    import warnings

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    tf_logger = tf.get_logger()
    tf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            char_rnn.save_model(char_rnn.build_model(4, 8), str(tmp_path / "m.h5"))
            tf_logger.warning("Compiled the loaded model, but the compiled metrics have yet to be built.")  # elsewhere
    finally:
        tf_logger.removeHandler(handler)
    assert not [w for w in caught if "HDF5" in str(w.message)]
    assert [r.getMessage() for r in records] == [
        "Compiled the loaded model, but the compiled metrics have yet to be built."
    ]
