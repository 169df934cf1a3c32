"""A Hydra multirun is one MLflow parent run; its jobs, from any launcher or sweeper, are the children.

The parent is created once, in the process that launches the jobs (`on_multirun_start`), before any job
starts: parallel jobs (`hydra/launcher=joblib`) then only look it up, so they never race to create it, and
the sqlite store exists before they write to it. Jobs find their parent by the sweep directory tag.
Imported by Hydra for every run, single runs too: keep it free of TensorFlow.
"""
from __future__ import annotations

import atexit
import os
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fedlm.tracking import tags



def sweep_dir(hydra_cfg: DictConfig) -> str:
    """The multirun's directory (`hydra.sweep.dir`), absolute: the key that ties the jobs to their parent run."""
    return os.path.abspath(hydra_cfg.sweep.dir)


def sweep_definition(config: DictConfig) -> dict[str, Any]:
    """What was swept: command-line overrides, the sweeper's `params` (e.g. from an experiment file), tools."""
    hydra_cfg = config.hydra
    return {
        "overrides": list(hydra_cfg.overrides.task),
        "sweeper": OmegaConf.to_container(hydra_cfg.sweeper, resolve=False),
        "launcher": OmegaConf.to_container(hydra_cfg.launcher, resolve=False),
    }


def swept_overrides(config: DictConfig) -> list[str]:
    """What a multirun varies, as `key=values`: command-line sweeps (`optimizer=sgd,adam`) and the sweeper's
    `params` (from an experiment file), after the `experiment=` that brought them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = list(config.hydra.overrides.task)
    swept = [o for o in OverridesParser.create().parse_overrides(task) if o.is_sweep_override()]
    on_command_line = {o.key_or_group for o in swept}  # these win over the sweeper's params, as in Hydra
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items() if k not in on_command_line]
    experiment = [o for o in task if o.startswith("experiment=")]
    return experiment + [o.input_line for o in swept] + params


def swept_keys(config: DictConfig) -> list[str]:
    return [o.partition("=")[0] for o in swept_overrides(config) if not o.startswith("experiment=")]


def sweep_name(config: DictConfig) -> str:
    """The parent run's name: `optimizer=sgd,adam client_weighting=num_examples,uniform`,
    `experiment=optimizers server_optimizer=sgd,sgdm,adagrad,adam,yogi`."""
    return " ".join(swept_overrides(config)) or "sweep"


def find_parent_run(experiment_id: str, directory: str):
    """The parent run (an `mlflow.entities.Run`) of the multirun in `directory`, if the callback created one."""
    import mlflow

    found = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.`{tags.SWEEP_DIR}` = '{directory}' and tags.`{tags.SWEEP_ROLE}` = 'parent'",
        output_format="list",
    )
    return found[0] if found else None


def child_run_name(overrides: list[str], parent) -> str:
    """A job's run name: the overrides that vary across its sweep (all of them if that is unknown)."""
    swept = set(parent.data.tags.get(tags.SWEPT_KEYS, "").split()) if parent else set()
    varying = [o for o in overrides if o.lstrip("+~").partition("=")[0] in swept]
    return " ".join(varying or overrides) or "default"


class MlflowSweepCallback(Callback):
    """Creates the sweep's parent run before the jobs start and closes it when they are done."""

    def __init__(self) -> None:
        self._parent_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow

        from fedlm.fl import runtime
        from fedlm.tracking import store

        mlflow.set_tracking_uri(store.tracking_uri_or_default(config.mlflow.tracking_uri))
        experiment = store.get_or_create_experiment(config.mlflow.experiment_name)
        definition = sweep_definition(config)
        client = mlflow.MlflowClient()
        parent = client.create_run(
            experiment.experiment_id,
            run_name=sweep_name(config),
            tags={
                tags.SWEEP_DIR: sweep_dir(config.hydra),
                tags.SWEEP_ROLE: "parent",
                tags.SWEEP_OVERRIDES: " ".join(definition["overrides"]),
                tags.SWEPT_KEYS: " ".join(swept_keys(config)),
                tags.SWEEPER: definition["sweeper"].get("_target_", ""),
                tags.LAUNCHER: definition["launcher"].get("_target_", ""),
                tags.GIT_COMMIT: store.git_commit(),
            },
        )
        self._parent_id = parent.info.run_id
        client.log_dict(self._parent_id, definition, "sweep.yaml")
        print(f"MLflow sweep parent run {self._parent_id} ({sweep_name(config)})", flush=True)
        # If a job fails, Hydra raises before on_multirun_end: the parent must not stay RUNNING, and a parallel
        # launcher's worker processes must not outlive us.
        atexit.register(self._terminate, "FAILED")
        atexit.register(runtime.kill_children)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from fedlm.fl import runtime

        if self._parent_id is not None:
            from fedlm.tracking import plots

            try:  # the children's eval_accuracy, overlaid; a figure that fails must not fail the finished sweep
                plots.log_sweep_figure(self._parent_id)
            except Exception as e:
                print(f"fedlm: could not log the sweep figure to run {self._parent_id}: {e!r}", flush=True)
        self._terminate("FINISHED")
        # joblib's (loky's) workers idle on after the sweep and exit only some time after we do: end them now.
        runtime.kill_children(timeout=2.0)

    def _terminate(self, status: str) -> None:
        if self._parent_id is None:
            return
        import mlflow

        mlflow.MlflowClient().set_terminated(self._parent_id, status)
        self._parent_id = None
