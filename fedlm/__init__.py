"""fedlm: config-driven experiments in federated fine-tuning of a character-level language model."""
import os

# Library INFO lines (TF's and TFF's C++ worker, MLflow's store set-up) would drown fedlm's own progress lines.
# Set before those libraries are imported; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per table append / model download
