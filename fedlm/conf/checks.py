"""Checks of a composed config that need no TensorFlow: declared ranges, files, combinations of keys, and (once
the data is parsed) the population. Each raises `ConfigError` naming the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import os
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from fedlm import vocab
from fedlm.conf import schema
from fedlm.errors import ConfigError

_FLOAT32_MAX = 3.4028234e38
_BOUNDS = {"ge": (operator.ge, ">="), "gt": (operator.gt, ">"), "le": (operator.le, "<="), "lt": (operator.lt, "<")}


def check_bounds(node: DictConfig, prefix: str = "") -> None:
    """Walk a config next to its dataclass schema; raise on the first key the schema does not have (Hydra's `+key=`
    adds one), the first NaN or infinite float, and the first value outside its declared bounds."""
    schema = OmegaConf.get_type(node)
    fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
    for key in node:
        path = f"{prefix}{key}"
        if fields and key not in fields and key != "hydra":
            known = [f.name for f in fields.values() if not f.name.startswith("_")]
            closest = difflib.get_close_matches(str(key), known, n=1) or [
                k
                for k in known
                if "".join(w[0] for w in k.split("_")) == key  # lr -> learning_rate
            ]
            hint = f"; did you mean {prefix}{closest[0]}?" if closest else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"{path}: no such key (added by `+{path}=…`?){hint}")
        if OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            check_bounds(value, path + ".")
            continue
        bounds = fields[key].metadata.get("bounds") if key in fields else None
        if not bounds:  # still no NaN or infinity: nothing fedlm takes means one (e.g. sample_temperatures=[nan])
            for i, item in enumerate(value if isinstance(value, ListConfig) else [value]):
                if isinstance(item, float) and not math.isfinite(item):
                    where = f"{path}[{i}]" if isinstance(value, ListConfig) else path
                    raise ConfigError(f"{where}={item!r}: must be a finite number")
            continue
        if value is None:
            continue
        # TF computes in float32: a value beyond its range would silently become inf.
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= _FLOAT32_MAX
        if not number or not all(_BOUNDS[k][0](value, b) for k, b in bounds.items()):
            allowed = " and ".join(f"{_BOUNDS[k][1]} {b}" for k, b in bounds.items())
            hint = "" if number else " (and a finite float32 value)"
            raise ConfigError(f"{path}={value!r}: must be {allowed}{hint}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first bad key: ranges, files, and combinations of keys."""
    check_bounds(cfg)
    if cfg.model.init != schema.RANDOM_INIT:  # a file of that name: model.init=./random
        check_model_file(
            cfg.model.init, "model.init", "random (a seeded random initialization), or null for the pretrained default"
        )
    if not str(cfg.cache_dir).strip():
        raise ConfigError(
            f"cache_dir={cfg.cache_dir!r}: empty (FEDLM_CACHE_DIR set to ''?); a directory for "
            "fedlm's caches, or unset FEDLM_CACHE_DIR for ~/.cache/fedlm"
        )
    if not cfg.mlflow.experiment_name.strip():
        raise ConfigError(f"mlflow.experiment_name={cfg.mlflow.experiment_name!r}: must be a non-empty name")
    resume = cfg.get("resume")
    if not (isinstance(resume, bool) or (isinstance(resume, (str, int)) and str(resume).strip())):
        raise ConfigError(f"resume={resume!r}: allowed true, false, a run directory or an MLflow run id")
    if cfg.pretrain.corpus is not None and not os.path.isfile(cfg.pretrain.corpus):
        raise ConfigError(
            f"pretrain.corpus={cfg.pretrain.corpus!r}: no such file (a UTF-8 text file, or null for the proxy plays)"
        )
    _check_samples(cfg)
    name = cfg.mlflow.registered_model_name
    if name is not None and not name.strip():
        raise ConfigError(f"mlflow.registered_model_name={name!r}: must be a non-empty name, or null")

    for group in ("optimizer", "server_optimizer"):
        if str(cfg[group].get("_target_", "")).endswith(".build_adafactor"):
            raise ConfigError(
                f"{group}=adafactor: TFF 0.87's build_adafactor does not run inside its own learning processes (its "
                "state keeps Python int/bool values that its graph-mode `next` cannot take: the server step fails on "
                "int32 vs float32 `steps`, the client step with KeyError 'steps'); choose sgd, sgdm, adam, adamw, "
                "adagrad, yogi or rmsprop"
            )
    for group in schema.GROUPS:  # each chosen option's own checks (conf/schema.py)
        OmegaConf.to_object(cfg[group]).check(cfg)


def check_model_file(path: str | None, key: str, alternative: str) -> None:
    """A Keras model file (HDF5, .keras) or a SavedModel directory; None passes."""
    if path is None:
        return
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ConfigError(
                f"{key}={path!r}: a directory, but no SavedModel (no saved_model.pb in it); allowed: "
                f"a Keras model file (.h5, .keras) or a SavedModel directory, {alternative}"
            )
    elif not os.path.isfile(path):
        raise ConfigError(
            f"{key}={path!r}: no such file; allowed: a Keras model file (.h5, .keras) or a SavedModel "
            f"directory, {alternative}"
        )


def _check_samples(cfg: DictConfig) -> None:
    """The prompts and temperatures of the text samples logged during a run."""
    if not cfg.sample_temperatures:
        raise ConfigError(
            "sample_temperatures=[]: must list at least one temperature >= 0 (sample_prompts=[] turns samples off)"
        )
    for i, prompt in enumerate(cfg.sample_prompts):
        check_prompt(prompt, f"sample_prompts[{i}]")
    for i, t in enumerate(cfg.sample_temperatures):
        check_temperature(t, f"sample_temperatures[{i}]")


def check_population(cfg: DictConfig, train_clients: Sequence[str], test_clients: int) -> None:
    """Checks that need the dataset's clients: clients per round, the fixed client list, the eval clients."""
    OmegaConf.to_object(cfg.sampling).check_population(cfg, train_clients)
    OmegaConf.to_object(cfg.participation).check_population(cfg, train_clients)
    if cfg.eval_clients > test_clients:
        raise ConfigError(f"eval_clients={cfg.eval_clients}: only {test_clients} clients have a test split")


def check_prompt(prompt: Any, key: str = "prompt") -> None:
    """A prompt must be a non-empty string of vocabulary characters."""
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError(f"{key}={prompt!r}: must be a non-empty string (the text to continue)")
    if unknown := vocab.unknown_chars(prompt):
        raise ConfigError(
            f"{key}={prompt!r}: characters outside the vocabulary: {unknown}; allowed: the "
            f"tutorial's {len(vocab.TUTORIAL_CHARS)} characters {''.join(vocab.TUTORIAL_CHARS)!r}"
        )


def check_temperature(value: Any, key: str = "temperature") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{key}={value!r}: must be a number >= 0 (0 = greedy, 1 = the model's distribution)")
