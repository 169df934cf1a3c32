"""Starting weights from a Keras model file: fedlm's own, or the TFF tutorial's published char-RNN.

The tutorial's models (`dickens_rnn.batch{1,8}.kerasmodel`: HDF5, saved with include_optimizer=False,
Embedding(86, 256) -> GRU(1024, stateful) -> Dense(86), batch 1 or 8) use the tutorial's 86 characters in the
tutorial's order, which are fedlm's ids 0-85. fedlm adds PAD (86) and OOV (87), so such a model is extended:

- embedding rows: PAD = zeros (a padding input only ever precedes padding targets, which are masked, so it
  cannot change a scored prediction); OOV = the mean of the 86 character rows (an unknown character reads as
  an "average" character rather than as any particular one);
- output layer: kernel columns for PAD and OOV = 0, bias = `UNUSED_LOGIT` (-1e4): their probability is
  exp(-1e4) = 0 in float32, so the extended model predicts exactly the same distribution over the 86
  characters as the original, never picks PAD or OOV, and (as they are never targets) their gradients stay 0.

Every way a file can fail to fit gets a `ConfigError` naming the key, the file and what fits. fedlm's own files
may hold any cell and depth (`model.cell`, `model.layers`); their sizes are read from the weights.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from fedlm.errors import ConfigError
from fedlm.model.char_rnn import ModelSizes, sizes_from_shapes
from fedlm.vocab import TUTORIAL_CHARS, VOCAB_SIZE

UNUSED_LOGIT = -1e4
TUTORIAL_VOCAB_SIZE = len(TUTORIAL_CHARS)  # 86


@dataclass
class InitialWeights:
    """Weights in fedlm's layout (vocabulary 88) and notes on how they were obtained (logged with the run)."""

    weights: list[np.ndarray]
    sizes: ModelSizes
    notes: list[str] = field(default_factory=list)


def _what_fits(expected: ModelSizes | None) -> str:
    if expected is None:
        layers, dims = "N x GRU(H) or N x LSTM(H) (return_sequences)", "any E, H, N"
    else:
        cell, n = expected.cell.upper(), expected.layers
        layers, dims = (
            f"{f'{n} x ' if n > 1 else ''}{cell}(H, return_sequences)",
            f"E={expected.embedding_dim}, H={expected.rnn_units}",
        )
    return (
        f"a Keras model file (HDF5, SavedModel or .keras) of Embedding(V, E) -> {layers} -> "
        f"Dense(V) with {dims}, input (batch, time) of character ids, and V = {VOCAB_SIZE} (fedlm's "
        f"vocabulary) or V = {TUTORIAL_VOCAB_SIZE} (the TFF tutorial's published models)"
    )


def saved_with_optimizer(path: str) -> bool:
    """Whether the file carries a compiled training config / optimizer state (HDF5, SavedModel or .keras)."""
    if os.path.isdir(path):
        meta = os.path.join(path, "keras_metadata.pb")
        return os.path.exists(meta) and b"training_config" in open(meta, "rb").read()
    if zipfile.is_zipfile(path):  # Keras v3 `.keras`
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json")) if "config.json" in z.namelist() else {}
        return bool(config.get("compile_config"))
    import h5py

    if not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return "optimizer_weights" in f or "training_config" in f.attrs


def load_keras_file(path: str, key: str = "model.init", expected: ModelSizes | None = None) -> InitialWeights:
    """Read a Keras file's char-RNN weights into fedlm's layout, checking it fits (`expected`, if given: the
    configured sizes, cell and depth must match)."""
    fits = _what_fits(expected)
    if not os.path.exists(path):
        raise ConfigError(f"{key}={path!r}: no such file; allowed: {fits}")
    try:
        loaded = tf.keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises OSError, ValueError, ImportError, ... for non-models
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{key}={path!r}: not a Keras model ({first_line}); allowed: {fits}") from e
    notes = []
    if saved_with_optimizer(path):
        # Accepted: the federated optimizers (client and server, from tff.learning.optimizers) start fresh
        # every run, so a central Keras optimizer's state has no use here; only the weights are read.
        notes.append(f"{key}={path!r} was saved with an optimizer; its state is ignored, only the weights are used")

    try:
        input_shape = loaded.input_shape
    except AttributeError:  # a subclassed model that was never built on an input
        input_shape = None
    if not (isinstance(input_shape, tuple) and len(input_shape) == 2):
        raise ConfigError(f"{key}={path!r}: input shape {input_shape}; fits: (batch, time) of character ids")
    shapes = [tuple(w.shape) for w in loaded.get_weights()]
    found = sizes_from_shapes(shapes)
    if found is None:
        raise ConfigError(f"{key}={path!r}: weight shapes {shapes} are not the char-RNN; allowed: {fits}")
    sizes, vocab = found
    if vocab not in (VOCAB_SIZE, TUTORIAL_VOCAB_SIZE):
        raise ConfigError(
            f"{key}={path!r}: vocabulary size {vocab}; fits: {VOCAB_SIZE} (fedlm: the tutorial's "
            f"{TUTORIAL_VOCAB_SIZE} characters + PAD + OOV) or {TUTORIAL_VOCAB_SIZE} (the tutorial's)"
        )
    if expected is not None and sizes != expected:
        fields = ("embedding_dim", "rnn_units", "cell", "layers")
        settings = " ".join(
            f"model.{k}={getattr(sizes, k)}" for k in fields if getattr(sizes, k) != getattr(expected, k)
        )
        tutorial = sizes == ModelSizes(256, 1024)
        raise ConfigError(
            f"{key}={path!r}: {sizes.describe()}, but the configured model is {expected.describe()}; "
            f"set {settings}" + (" (or model=tutorial)" if tutorial else "")
        )
    weights = loaded.get_weights()
    if vocab == TUTORIAL_VOCAB_SIZE:
        weights = extend_tutorial_weights(weights)
        notes.append(
            f"{key}={path!r} has the tutorial's {TUTORIAL_VOCAB_SIZE}-character vocabulary: extended "
            f"with PAD (embedding 0, logit {UNUSED_LOGIT:g}) and OOV (mean embedding, logit {UNUSED_LOGIT:g})"
        )
    return InitialWeights(weights, sizes, notes)


def extend_tutorial_weights(weights: list[np.ndarray]) -> list[np.ndarray]:
    """The tutorial's 86-character weights -> fedlm's 88 (PAD, OOV appended; see the module docstring)."""
    embedding, *recurrent, dense_kernel, dense_bias = weights
    # Rows are appended: PAD_ID == 86 and OOV_ID == 87 come right after the tutorial's 86 characters.
    embedding = np.concatenate([embedding, np.zeros_like(embedding[:1]), embedding.mean(axis=0, keepdims=True)])
    dense_kernel = np.concatenate([dense_kernel, np.zeros_like(dense_kernel[:, :2])], axis=1)
    dense_bias = np.concatenate([dense_bias, np.full(2, UNUSED_LOGIT, dense_bias.dtype)])
    return [embedding, *recurrent, dense_kernel, dense_bias]
