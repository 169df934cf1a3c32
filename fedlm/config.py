"""Checks on the composed config that run before TensorFlow is imported, so bad input costs no work."""
from __future__ import annotations

import os

from omegaconf import DictConfig

CLIENT_WEIGHTINGS = ("num_examples", "uniform")
DATA_NAMES = ("shakespeare", "tff_shakespeare")


class ConfigError(ValueError):
    """A config value that fedlm cannot run with; the message names the key, the value and what is allowed."""


def _positive_int(cfg: DictConfig, key: str, allow_none: bool = False) -> None:
    value = cfg.get(key) if "." not in key else _select(cfg, key)
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{key}={value!r}: must be an integer >= 1{extra}")


def _select(cfg: DictConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part)
    return node


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad key."""
    for key in ("rounds", "clients_per_round", "local_epochs", "seq_length", "batch_size", "shuffle_buffer",
                "eval_every", "eval_clients", "eval_batch_size", "model.embedding_dim", "model.rnn_units",
                "pretrain.steps", "pretrain.batch_size", "pretrain.seq_length", "pretrain.log_every"):
        _positive_int(cfg, key)
    _positive_int(cfg, "max_batches_per_client", allow_none=True)
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed!r}: must be an integer >= 0")
    if cfg.client_weighting not in CLIENT_WEIGHTINGS:
        raise ConfigError(f"client_weighting={cfg.client_weighting!r}: allowed {list(CLIENT_WEIGHTINGS)}")
    if cfg.data.name not in DATA_NAMES:
        raise ConfigError(f"data.name={cfg.data.name!r}: allowed {list(DATA_NAMES)}")
    if not 0.0 <= float(cfg.data.test_fraction) < 1.0:
        raise ConfigError(f"data.test_fraction={cfg.data.test_fraction!r}: must be in [0, 1)")
    for group in ("optimizer", "server_optimizer"):
        lr = cfg[group].get("learning_rate")
        if not isinstance(lr, (int, float)) or lr <= 0:
            raise ConfigError(f"{group}.learning_rate={lr!r}: must be a number > 0")
    if not isinstance(cfg.pretrain.learning_rate, (int, float)) or cfg.pretrain.learning_rate <= 0:
        raise ConfigError(f"pretrain.learning_rate={cfg.pretrain.learning_rate!r}: must be a number > 0")
    if cfg.model.init is not None and not os.path.isfile(cfg.model.init):
        raise ConfigError(f"model.init={cfg.model.init!r}: no such file (a Keras model file, or null for the pretrained default)")
    if cfg.pretrain.corpus is not None and not os.path.isfile(cfg.pretrain.corpus):
        raise ConfigError(f"pretrain.corpus={cfg.pretrain.corpus!r}: no such file (a UTF-8 text file, or null for the proxy plays)")


def check_population(cfg: DictConfig, num_clients: int) -> None:
    """Checks that need the dataset's size."""
    if cfg.clients_per_round > num_clients:
        raise ConfigError(
            f"clients_per_round={cfg.clients_per_round}: larger than the training population of {num_clients} clients"
        )
