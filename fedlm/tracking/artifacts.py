"""The trained model as a run leaves it: a plain Keras file and an MLflow `tensorflow` model (optionally registered).

`mlflow.keras` needs Keras 3; TF 2.14's Keras 2 goes through `mlflow.tensorflow`, which saves the Keras model
(HDF5) and loads it back with `mlflow.tensorflow.load_model(f"runs:/{run_id}/{LOGGED_MODEL_NAME}")` as a Keras
model (or `mlflow.pyfunc.load_model(...).predict(ids)` for logits).
"""
from __future__ import annotations

import logging
import os

import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from fedlm.model import char_rnn
from fedlm.tracking import tags
from fedlm.vocab import VOCAB_SIZE

# uv's environments have no pip: MLflow would say so at the end of every run. (Set here, after MLflow's import-time
# logging set-up, which resets its child loggers' levels.)
logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)

KERAS_FILE = "final_model.h5"
KERAS_ARTIFACT_DIR = "model"
LOGGED_MODEL_NAME = "final_model"

# (batch, time) int32 character ids -> (batch, time, vocab) float32 logits.
SIGNATURE = ModelSignature(
    inputs=Schema([TensorSpec(np.dtype(np.int32), (-1, -1), "ids")]),
    outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, VOCAB_SIZE), "logits")]),
)


def portable_copy(weights) -> tf.keras.Model:
    """A fresh, uncompiled stock-Keras char-RNN holding `weights` (TFF ModelWeights): loadable without fedlm."""
    model = char_rnn.build_model(*char_rnn.sizes_from_weights(weights))
    weights.assign_weights_to(model)
    return model


def log_final_model(model: tf.keras.Model, out_dir: str, registered_model_name: str | None = None) -> str:
    """Save the Keras file (no optimizer, as the tutorial's models) and log it and the MLflow model; its path."""
    path = char_rnn.save_model(model, os.path.join(out_dir, KERAS_FILE))
    mlflow.log_artifact(path, KERAS_ARTIFACT_DIR)
    mlflow.set_tag(tags.KERAS_MODEL, f"{KERAS_ARTIFACT_DIR}/{KERAS_FILE}")  # what fedlm.generate looks for
    with char_rnn.quiet_save_notices():
        mlflow.tensorflow.log_model(
            model, name=LOGGED_MODEL_NAME, signature=SIGNATURE, registered_model_name=registered_model_name,
            # Given, not inferred: inference re-imports the model in a subprocess (~25 s here) to list packages.
            pip_requirements=[f"tensorflow=={tf.__version__}"],
            # HDF5 like the Keras file: 0.1 s instead of ~5 s for a SavedModel export (which traces the model).
            keras_model_kwargs={"save_format": "h5"},
        )
    return path
