"""The tutorial's char-RNN (Embedding -> GRU or LSTM layers -> Dense logits): building it, its sizes, saving it as
stock Keras."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from fedlm.conf.schema import RNN_GATES, RNN_IMPLEMENTATIONS, rnn_implementation
from fedlm.model.gru import FastGRU
from fedlm.model.lstm import FastLSTM
from fedlm.vocab import VOCAB_SIZE

_LAYERS = {("gru", "keras"): tf.keras.layers.GRU, ("gru", "fast"): FastGRU}
_LAYERS |= {("lstm", "keras"): tf.keras.layers.LSTM, ("lstm", "fast"): FastLSTM}
_STOCK = {FastGRU: tf.keras.layers.GRU, FastLSTM: tf.keras.layers.LSTM}


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    """What a char-RNN's weights say about it: embedding width, units (every recurrent layer), cell and depth."""

    embedding_dim: int
    rnn_units: int
    cell: str = "gru"
    layers: int = 1

    @classmethod
    def of(cls, model: Any) -> ModelSizes:
        """The sizes of a `model` config node (conf/model/*.yaml)."""
        return cls(model.embedding_dim, model.rnn_units, model.cell.value, model.layers)

    def describe(self) -> str:
        """`Embedding 8 -> LSTM 256 x 2`, as messages say it."""
        depth = f" x {self.layers}" if self.layers > 1 else ""
        return f"Embedding {self.embedding_dim} -> {self.cell.upper()} {self.rnn_units}{depth}"

    def weight_shapes(self, vocab_size: int = VOCAB_SIZE) -> list[tuple[int, ...]]:
        """The shapes of the weights in Keras order: Embedding (V, E); per recurrent layer its kernel (input, kH),
        recurrent kernel (H, kH) and bias -- (2, 3H) for the GRU (reset_after: input and recurrent biases), (4H,)
        for the LSTM; then Dense (H, V), (V,)."""
        k, h = RNN_GATES[self.cell], self.rnn_units
        bias = (2, 3 * h) if self.cell == "gru" else (4 * h,)
        rnn = [s for n in range(self.layers) for s in ((self.embedding_dim if n == 0 else h, k * h), (h, k * h), bias)]
        return [(vocab_size, self.embedding_dim), *rnn, (h, vocab_size), (vocab_size,)]

    def build(self, implementation: str = "keras", **kwargs) -> tf.keras.Model:
        """`build_model` of these sizes."""
        return build_model(
            self.embedding_dim, self.rnn_units, implementation, cell=self.cell, layers=self.layers, **kwargs
        )


def build_recurrent(
    units: int, implementation: str, cell: str = "gru", stateful: bool = False, **kwargs
) -> tf.keras.layers.Layer:
    """A recurrent layer of the char-RNN (return_sequences): `cell` "gru" or "lstm"; `implementation` "keras" (the
    stock layer) or "fast" (FastGRU / FastLSTM: same weights, faster training; stateful, they run the stock code,
    so batch-1 generation is unchanged). `kwargs` go to the layer (e.g. initializers)."""
    if implementation not in RNN_IMPLEMENTATIONS:
        raise ValueError(f"model.{cell}={implementation!r}: allowed {list(RNN_IMPLEMENTATIONS)}")
    return _LAYERS[cell, implementation](units, return_sequences=True, stateful=stateful, **kwargs)


def build_model(
    embedding_dim: int,
    rnn_units: int,
    implementation: str = "keras",
    batch_size: int | None = None,
    stateful: bool = False,
    random_init: bool = True,
    *,
    cell: str = "gru",
    layers: int = 1,
) -> tf.keras.Model:
    """Embedding(vocab, E) -> `layers` x GRU or LSTM(H, return_sequences) -> Dense(vocab); batch 1 + stateful for
    generation.

    `implementation` ("keras" or "fast", the config's `model.gru` / `model.lstm`) picks the recurrent layers' code;
    both hold the same weights. `random_init=False` starts every weight at zero, for copies whose weights are
    always overwritten before use: TFF builds the model and runs its initializers for every client in every round,
    and Keras's orthogonal initializer of a GRU(1024) recurrent kernel alone takes ~0.8 s (a QR decomposition) on a
    2-core CPU.
    """
    init = {} if random_init else {"embeddings_initializer": "zeros"}
    layer_init = {} if random_init else {"kernel_initializer": "zeros", "bias_initializer": "zeros"}
    rnn_init = {} if random_init else {**layer_init, "recurrent_initializer": "zeros"}
    return tf.keras.Sequential(
        [
            tf.keras.layers.InputLayer(input_shape=(None,), batch_size=batch_size, dtype=tf.int32),
            tf.keras.layers.Embedding(VOCAB_SIZE, embedding_dim, **init),
            *(build_recurrent(rnn_units, implementation, cell, stateful=stateful, **rnn_init) for _ in range(layers)),
            tf.keras.layers.Dense(VOCAB_SIZE, **layer_init),
        ]
    )


def build_configured(model: Any, **kwargs) -> tf.keras.Model:
    """`build_model` of a `model` config node: its sizes, cell, depth and the code its cell's key chooses."""
    return ModelSizes.of(model).build(rnn_implementation(model), **kwargs)


def sizes_from_shapes(shapes: list[tuple[int, ...]]) -> tuple[ModelSizes, int] | None:
    """(sizes, vocabulary size) of the char-RNN whose weights have these shapes (Keras order), or None if they
    are not one: an Embedding, one or more GRU (reset_after) or LSTM layers of the same cell and units, a Dense."""
    if len(shapes) < 6 or (len(shapes) - 3) % 3 or len(shapes[0]) != 2 or len(shapes[2]) != 2:
        return None
    (vocab, emb), units = shapes[0], shapes[2][0]
    gates, rem = divmod(shapes[2][1], units) if units else (0, 1)
    cell = {3: "gru", 4: "lstm"}.get(gates) if not rem else None
    if cell is None:
        return None
    sizes = ModelSizes(emb, units, cell, (len(shapes) - 3) // 3)
    return (sizes, vocab) if [tuple(s) for s in shapes] == sizes.weight_shapes(vocab) else None


def sizes_from_weights(weights) -> ModelSizes:
    """The sizes, cell and depth of a char-RNN from its weights: a list of arrays in Keras order, or TFF
    `ModelWeights` (ValueError if they are not a char-RNN's)."""
    arrays = list(weights.trainable) if hasattr(weights, "trainable") else list(weights)
    found = sizes_from_shapes([tuple(a.shape) for a in arrays])
    if found is None:
        raise ValueError(f"weight shapes {[tuple(a.shape) for a in arrays]} are not a char-RNN's")
    return found[0]


def to_stock_keras(model: tf.keras.Model) -> tf.keras.Model:
    """The same model and weights with every FastGRU / FastLSTM replaced by the stock Keras layer.

    Saved files then load with plain Keras (no fedlm import needed), exactly like the tutorial's models.
    """

    def clone(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        return _STOCK.get(type(layer), layer.__class__).from_config(layer.get_config())

    stock = tf.keras.models.clone_model(model, clone_function=clone)
    stock.set_weights(model.get_weights())
    return stock


def save_model(model: tf.keras.Model, path: str) -> str:
    """Stock Keras file (FastGRU saved as GRU, FastLSTM as LSTM) without optimizer, as the tutorial's models."""
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
