"""Shared fixtures: an isolated cache and MLflow store per test session, and one TFF context for the session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

TINY = [
    "model=tiny", "rounds=2", "clients_per_round=2", "eval_every=1", "eval_clients=3",
    "max_batches_per_client=2", "pretrain.steps=4", "pretrain.log_every=2", "pretrain.batch_size=4",
    "seq_length=20", "pretrain.seq_length=20",
]


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("fedlm")
    os.environ["FEDLM_CACHE_DIR"] = str(root / "cache")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    yield root


def compose_config(overrides: list[str] | None = None):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose(config_name="config", overrides=overrides or [])
