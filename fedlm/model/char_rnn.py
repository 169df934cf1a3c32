"""The tutorial's char-RNN (Embedding -> GRU -> Dense logits): building it, its sizes, saving it as stock Keras."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

import tensorflow as tf

from fedlm.model.gru import FastGRU, build_gru
from fedlm.vocab import VOCAB_SIZE


def build_model(
    embedding_dim: int,
    rnn_units: int,
    gru: str = "keras",
    batch_size: int | None = None,
    stateful: bool = False,
    random_init: bool = True,
) -> tf.keras.Model:
    """Embedding(vocab, E) -> GRU(H, return_sequences) -> Dense(vocab); batch 1 + stateful for generation.

    `gru` ("keras" or "fast", the config's `model.gru`) picks the recurrent layer; both hold the same weights.
    `random_init=False` starts every weight at zero, for copies whose weights are always overwritten before use:
    TFF builds the model and runs its initializers for every client in every round, and Keras's orthogonal
    initializer of a GRU(1024) recurrent kernel alone takes ~0.8 s (a QR decomposition) on a 2-core CPU.
    """
    init = {} if random_init else {"embeddings_initializer": "zeros"}
    layer_init = {} if random_init else {"kernel_initializer": "zeros", "bias_initializer": "zeros"}
    gru_init = {} if random_init else {**layer_init, "recurrent_initializer": "zeros"}
    return tf.keras.Sequential(
        [
            tf.keras.layers.InputLayer(input_shape=(None,), batch_size=batch_size, dtype=tf.int32),
            tf.keras.layers.Embedding(VOCAB_SIZE, embedding_dim, **init),
            build_gru(rnn_units, gru, stateful=stateful, **gru_init),
            tf.keras.layers.Dense(VOCAB_SIZE, **layer_init),
        ]
    )


def sizes_from_weights(weights) -> tuple[int, int]:
    """(embedding_dim, rnn_units) of a char-RNN from its weights: a list of arrays in Keras order, or TFF
    `ModelWeights`. Embedding (V, E), then the GRU kernel (E, 3H) and recurrent kernel (H, 3H)."""
    arrays = list(weights.trainable) if hasattr(weights, "trainable") else list(weights)
    return int(arrays[0].shape[1]), int(arrays[2].shape[0])


def to_stock_keras(model: tf.keras.Model) -> tf.keras.Model:
    """The same model and weights with every FastGRU replaced by a stock `tf.keras.layers.GRU`.

    Saved files then load with plain Keras (no fedlm import needed), exactly like the tutorial's models.
    """

    def clone(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        cls = tf.keras.layers.GRU if isinstance(layer, FastGRU) else layer.__class__
        return cls.from_config(layer.get_config())

    stock = tf.keras.models.clone_model(model, clone_function=clone)
    stock.set_weights(model.get_weights())
    return stock


def save_model(model: tf.keras.Model, path: str) -> str:
    """Stock Keras file (FastGRU saved as GRU) without optimizer, as the tutorial's published models."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with quiet_save_notices():
        tf.keras.models.save_model(to_stock_keras(model), path, include_optimizer=False)
    return path


@contextlib.contextmanager
def quiet_save_notices() -> Iterator[None]:
    """Saving prints two notices that do not apply: Keras's HDF5 "legacy format" warning (HDF5 is chosen on
    purpose: the tutorial's format, loadable by any Keras 2), and "compiled metrics have yet to be built" (Keras
    tries to build the metrics of the model being saved; fedlm saves uncompiled copies)."""
    tf_logger = tf.get_logger()
    not_built = _DropMessage("the compiled metrics have yet to be built")
    tf_logger.addFilter(not_built)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file", category=UserWarning)
            yield
    finally:
        tf_logger.removeFilter(not_built)


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str):
        super().__init__()
        self._fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self._fragment not in record.getMessage()
