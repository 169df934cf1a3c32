"""MLflow's store: where runs go (the tracking URI and its default), experiments, params and the config file.
No TensorFlow here: `fedlm.run` checks the store before importing it.

Importing this module makes MLflow open database stores through `_database_store` (see there): a sqlite store's
default artifact root beside the .db file, and the host's logging left alone while MLflow migrates the schema."""

from __future__ import annotations

import contextlib
import logging.config
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.store.db.db_types import DATABASE_ENGINES
from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH

from fedlm.conf import preflight, schema
from fedlm.errors import ConfigError
from fedlm.tracking import tags
from fedlm.vocab import RANDOM_GUESS

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


def default_tracking_uri() -> str:
    """A sqlite store in the project root, absolute, so runs from any directory land in one place."""
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite store go beside the .db file (not ./mlruns of whatever directory we run in)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent.resolve() / "mlartifacts").as_uri()
    return None  # a tracking server decides


@contextlib.contextmanager
def _host_logging_kept() -> Iterator[None]:
    """MLflow 3.5 migrates a database store on every open (its all-tables check misses its newer tables), and its
    alembic env.py then runs `logging.config.fileConfig(alembic.ini)`: the root handlers (Hydra's console and run
    log) are replaced by a stderr one and alembic is set to INFO, 44 lines on a new store, 2-4 later. Fixed
    upstream (mlflow#19038); until then the migration runs with `fileConfig` a no-op, and without INFO records
    (some migrations log under their own module names, not alembic's)."""
    file_config, disabled = logging.config.fileConfig, logging.root.manager.disable
    logging.config.fileConfig = lambda *args, **kwargs: None
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.config.fileConfig = file_config
        logging.disable(disabled)


def _database_store(store_uri: str, artifact_uri: str | None = None):
    """MLflow's builder of database tracking stores, but with no empty ./mlruns: without an explicit artifact
    root (a server passes one) MLflow creates ./mlruns in the working directory, wherever the store is."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = artifact_uri or _artifact_location(store_uri) or DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    with _host_logging_kept():
        return SqlAlchemyStore(store_uri, root)


def _database_registry_store(store_uri: str, **_: Any):
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    with _host_logging_kept():  # the model registry's store migrates on open too
        return SqlAlchemyStore(store_uri)


def _register_database_stores() -> None:
    """MLflow's plugin hook (a store builder per URI scheme), reached through its registries' module globals."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    for scheme in DATABASE_ENGINES:
        tracking_utils._tracking_store_registry.register(scheme, _database_store)
        registry_utils._get_store_registry().register(scheme, _database_registry_store)


_register_database_stores()

EXPERIMENT_DESCRIPTION = """Federated fine-tuning of a character-level language model (a char-RNN pretrained on \
Shakespeare's histories) on the other plays, one client per (play, role), with TensorFlow Federated; logged by fedlm.

* **Runs**: one per `python -m fedlm.run`, named by what it does (`fedavg sgd→sgd 10c`); a sweep (`-m`) is a parent \
run with one child per job, named by its swept values (`adam · uniform`). Each run's description has its setup and \
its eval figures at the start and the end.
* **Params**: the chosen options (`optimizer = adam`) and their keys; machine-local settings are `fedlm.config.*` tags.
* **Metrics**: per round, step = round: `train/*` (the round's clients), `eval/*` (the fixed eval clients; round 0 is \
the pretrained start). The data's constants are the runs' datasets (`train`, `eval`) and `fedlm.*` tags.
* **Models**: each run's `final_model`, logged at its last round with that round's metrics."""


def get_or_create_experiment(name: str):
    """The experiment `name`, created if missing; tagged with its kind and described, unless already described."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        with contextlib.suppress(MlflowException):  # a parallel job created it first
            mlflow.create_experiment(name, artifact_location=_artifact_location(mlflow.get_tracking_uri()))
    experiment = mlflow.set_experiment(name)
    if tags.EXPERIMENT_KIND not in experiment.tags:  # a kind or description set in the UI is kept
        mlflow.set_experiment_tag(tags.EXPERIMENT_KIND, tags.CUSTOM_MODEL_DEVELOPMENT)
    if tags.DESCRIPTION not in experiment.tags:
        mlflow.set_experiment_tag(tags.DESCRIPTION, EXPERIMENT_DESCRIPTION)
    return experiment


def log_random_guess() -> None:
    """The random-guess reference, printed as the tutorial prints it (a constant: a tag, datasets.constants)."""
    print(
        f"Expected accuracy for random guessing: {RANDOM_GUESS['random_guess_accuracy']:.3f} (perplexity "
        f"{RANDOM_GUESS['random_guess_perplexity']:.0f}, {RANDOM_GUESS['random_guess_bits_per_char']:.2f} "
        f"bits/char)",
        flush=True,
    )


def run_params(config_flat: Mapping[str, Any], choices: Mapping[str, Any]) -> dict[str, Any]:
    """A run's params, what makes the experiment: the option chosen in every group (`optimizer=adam`, readable and
    searchable as `params.optimizer = 'adam'`) and the keys of the chosen options and the rest of the config -- not
    how options are built (`_target_`, `_partial_`) nor machine-local keys (machine_tags), which `config.yaml`
    keeps -- nor the groups the chosen options leave unused (FedSGD's client optimizer: `schema.unused_groups`)."""
    unused = schema.unused_groups(choices)
    params = {group: choice for group, choice in choices.items() if not schema.is_machine_key(group) and choice}
    params |= {
        k: v
        for k, v in config_flat.items()
        if k.rsplit(".", 1)[-1] not in schema.BUILD_KEYS and not schema.is_machine_key(k) and k not in choices
    }  # a group's own key (`experiment: null` until an experiment file is chosen) is its choice, not the config's
    return {k: v for k, v in params.items() if k.split(".", 1)[0] not in unused}


def machine_tags(config_flat: Mapping[str, Any]) -> dict[str, str]:
    """The machine-local keys (schema.MACHINE_KEYS) as tags, `fedlm.config.cache_dir`: they may differ on resume."""
    return {f"{tags.CONFIG_PREFIX}{k}": str(v)[:5000] for k, v in config_flat.items() if schema.is_machine_key(k)}


def log_config(cfg_flat: Mapping[str, Any], yaml_text: str) -> None:
    """Params: the experiment's part of the flattened resolved config (MLflow's 500-chars limit per value); the
    whole config as `config.yaml`."""
    mlflow.log_params({k: str(v)[:500] for k, v in cfg_flat.items()})
    mlflow.log_text(yaml_text, "config.yaml")


def tracking_uri_or_default(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def open_existing(uri: str | None, instead: str = "") -> str:
    """Use the store that holds runs already (`fedlm.generate`, `fedlm.report` read it): `mlflow.tracking_uri`, or
    $MLFLOW_TRACKING_URI, or the default store. A sqlite file that does not exist is refused, naming it, rather than
    created empty by MLflow; `instead`: what else the command takes. The URI."""
    uri = tracking_uri_or_default(uri)
    if uri.startswith("sqlite:///") and not os.path.isfile(uri[len("sqlite:///") :]):
        raise ConfigError(
            f"mlflow.tracking_uri={uri!r}: no such store (no file {uri[len('sqlite:///') :]}); "
            f"give the store your runs were logged to{instead}"
        )
    mlflow.set_tracking_uri(uri)
    return uri


def connect(uri: str | None, experiment_name: str) -> str:
    """Use `mlflow.tracking_uri` (or $MLFLOW_TRACKING_URI, or the default store) in this process, checked first:
    results need somewhere to go before any work starts (preflight.check_tracking_store), and a deleted experiment
    of that name would refuse them. The URI."""
    uri = tracking_uri_or_default(uri)
    preflight.check_tracking_store(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.MlflowClient().get_experiment_by_name(experiment_name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"mlflow.experiment_name={experiment_name!r}: that experiment is deleted in {uri}; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`, with MLFLOW_TRACKING_URI "
            "set to the store) or choose another name"
        )
    return uri
