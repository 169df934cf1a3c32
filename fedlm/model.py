"""The tutorial's char-RNN (Embedding -> GRU -> Dense logits), its masked loss and accuracy, and weight hand-off."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Iterator

import tensorflow as tf

from fedlm.gru import FastGRU, build_gru
from fedlm.metrics import text_metrics
from fedlm.vocab import PAD_ID, VOCAB_SIZE


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


def _target_mask(y_true: tf.Tensor) -> tf.Tensor:
    """1 for real vocabulary targets; 0 for padding and OOV (ids >= PAD_ID)."""
    return tf.cast(tf.less(tf.cast(y_true, tf.int32), PAD_ID), tf.float32)


def real_target_count(y_true: tf.Tensor) -> tf.Tensor:
    """The number of targets that count for loss and accuracy (not padding, not OOV), as int64."""
    return tf.math.count_nonzero(tf.less(tf.cast(y_true, tf.int32), PAD_ID), dtype=tf.int64)


@tf.keras.utils.register_keras_serializable(package="fedlm")
class NumTokens(tf.keras.metrics.Sum):
    """The number of real target characters seen (padding and OOV excluded)."""

    def __init__(self, name: str = "num_tokens", dtype=tf.float32):
        super().__init__(name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(tf.reduce_sum(_target_mask(y_true)))


@tf.keras.utils.register_keras_serializable(package="fedlm")
class MaskedCrossEntropy(tf.keras.losses.Loss):
    """Mean cross-entropy over real target characters of a batch (padding and OOV excluded)."""

    def __init__(self, name: str = "masked_cross_entropy", **kwargs):
        super().__init__(name=name, reduction=tf.keras.losses.Reduction.NONE, **kwargs)

    def call(self, y_true, y_pred):
        mask = _target_mask(y_true)
        labels = tf.minimum(tf.cast(y_true, tf.int32), VOCAB_SIZE - 1)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=y_pred)
        return tf.math.divide_no_nan(tf.reduce_sum(ce * mask), tf.reduce_sum(mask))


@tf.keras.utils.register_keras_serializable(package="fedlm")
class MaskedAccuracy(tf.keras.metrics.SparseCategoricalAccuracy):
    """Next-character accuracy over real targets (padding and OOV excluded)."""

    def __init__(self, name: str = "accuracy", dtype=tf.float32):
        super().__init__(name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(
            tf.reshape(y_true, [-1, 1]), tf.reshape(y_pred, [-1, VOCAB_SIZE]), tf.reshape(_target_mask(y_true), [-1])
        )


def compile_for_eval(model: tf.keras.Model) -> tf.keras.Model:
    model.compile(loss=MaskedCrossEntropy(), metrics=[MaskedAccuracy(), NumTokens(), *text_metrics()])
    return model


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
