"""The trained model as a run leaves it: a plain Keras file and an MLflow `tensorflow` model (optionally registered).

`mlflow.keras` needs Keras 3; TF 2.14's Keras 2 goes through `mlflow.tensorflow`, which saves the Keras model
(HDF5) and loads it back with `mlflow.tensorflow.load_model(f"runs:/{run_id}/{LOGGED_MODEL_NAME}")` as a Keras
model (or `mlflow.pyfunc.load_model(...).predict(ids)` for logits).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import mlflow
import numpy as np
import tensorflow as tf
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from fedlm.model import char_rnn
from fedlm.tracking import names, tags
from fedlm.vocab import OOV_ID, PAD_ID, VOCAB_SIZE

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
    model = char_rnn.sizes_from_weights(weights).build()
    weights.assign_weights_to(model)
    return model


def model_description(run_name: str, run_id: str, model_id: str, step: int, metrics: Mapping[str, float]) -> str:
    """A logged model's description (Markdown): whose model, what it reached, its signature, how to load it."""
    reached = ", ".join(f"`{k}` {metrics[k]:.4f}" for k in (names.EVAL_LOSS, names.EVAL_ACCURACY) if k in metrics)
    return f"""**{run_name}**: the server model after round {step} ({reached or "not evaluated"}).

Signature: `ids`, int32 `(batch, time)` character ids (`fedlm.vocab`: the TFF tutorial's {PAD_ID} characters, \
{PAD_ID} padding, {OOV_ID} out of vocabulary) → `logits`, float32 `(batch, time, {VOCAB_SIZE})`.

```python
import mlflow
model = mlflow.tensorflow.load_model("models:/{model_id}")  # or "runs:/{run_id}/{LOGGED_MODEL_NAME}"
logits = model(ids)  # a Keras model; mlflow.pyfunc.load_model(...).predict(ids) gives the logits too
```

Text from it: `python -m fedlm.generate run_id={run_id}`."""


def log_final_model(
    model: tf.keras.Model, out_dir: str, registered_model_name: str | None = None, step: int = 0
) -> str:
    """Save the Keras file (no optimizer, as the tutorial's models) and log it and the MLflow model, at `step` (the
    last round): MLflow links the run's metrics of that step to the model, which its model page and the experiment's
    Models tab show. Tagged and described with the run's name. The Keras file's path."""
    path = char_rnn.save_model(model, os.path.join(out_dir, KERAS_FILE))
    mlflow.log_artifact(path, KERAS_ARTIFACT_DIR)
    mlflow.set_tag(tags.KERAS_MODEL, f"{KERAS_ARTIFACT_DIR}/{KERAS_FILE}")  # what fedlm.generate looks for
    run = mlflow.active_run()
    run_name = mlflow.get_run(run.info.run_id).info.run_name
    with char_rnn.quiet_save_notices():
        info = mlflow.tensorflow.log_model(
            model,
            name=LOGGED_MODEL_NAME,
            signature=SIGNATURE,
            registered_model_name=registered_model_name,
            # Given, not inferred: inference re-imports the model in a subprocess (~25 s here) to list packages.
            pip_requirements=[f"tensorflow=={tf.__version__}"],
            # HDF5 like the Keras file: 0.1 s instead of ~5 s for a SavedModel export (which traces the model).
            keras_model_kwargs={"save_format": "h5"},
            step=step,
            tags={tags.RUN_NAME: run_name, tags.ROUND: str(step)},
        )
    client = mlflow.MlflowClient()
    linked = {m.key: m.value for m in client.get_logged_model(info.model_id).metrics or []}
    client.set_logged_model_tags(
        info.model_id, {tags.DESCRIPTION: model_description(run_name, run.info.run_id, info.model_id, step, linked)}
    )
    return path
