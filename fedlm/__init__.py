"""fedlm: config-driven experiments in federated fine-tuning of a character-level language model."""

import os

from fedlm import console

# Library INFO lines (TF's and TFF's C++ worker, MLflow's store set-up) would drown fedlm's own progress lines.
# Set before those libraries are imported; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per table append / model download
# gRPC's fork handlers serve children that go on using gRPC without exec; fedlm's children (TFF's worker, Hydra's
# joblib workers) exec at once. With the handlers on, each fork while TFF's channel is busy logs "Other threads
# are currently calling into gRPC, skipping fork() handlers" (the benchmark's second worker).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
# TensorFlow's import-time CUDA-plugin errors and TF-TRT warning, those lines only (see fedlm/console.py).
console.filter_first_import("tensorflow", console.TENSORFLOW_IMPORT_NOISE)
