"""A Hydra multirun is one MLflow parent run; its jobs, from any launcher or sweeper, are the children.

The parent is created once, in the process that launches the jobs (`on_multirun_start`), before any job
starts: parallel jobs (`hydra/launcher=joblib`) then only look it up, so they never race to create it, and
the sqlite store exists before they write to it. Jobs find their parent by the sweep directory tag.
Imported by Hydra for every run, single runs too: keep it free of TensorFlow.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fedlm.conf import schema
from fedlm.tracking import names, tags


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
    """The keys a multirun varies, as a job's parsed overrides name them: without `+`, `++` or `~` (an experiment
    file's `+experiment/reddi2020_server: fedavg,…` varies the group `experiment/reddi2020_server`)."""
    return [o.partition("=")[0].lstrip("+~") for o in swept_overrides(config) if not o.startswith("experiment=")]


def sweep_name(config: DictConfig) -> str:
    """The parent run's name: what the sweep varies, `optimizer × client_weighting`,
    `optuna: client lr × server lr × local_epochs` (names.sweep_name)."""
    return names.sweep_name(swept_keys(config), config.hydra.runtime.choices.get("experiment"))


def _swept(key: str, swept: Sequence[str]) -> bool:
    """`key` varies across the sweep: a swept key, or an option's key of a swept group (`optimizer.learning_rate`
    when `optimizer=sgd,adam` is swept)."""
    return any(key == k or key.startswith(f"{k}.") for k in swept)


def parent_params(config: DictConfig) -> dict[str, Any]:
    """The params every child shares (the sweep's config, but the swept keys and what a swept group's options set),
    and each swept key with its sweep spec (`optimizer` = `sgd,adam`): the parent ticked with its children then
    differs from them only there. What an option of a swept group sets is known only by composing it (an experiment
    file's `+experiment/mcmahan2017_algorithm=fedsgd` sets the algorithm and the optimizers): in Hydra's launching
    process, the config is composed with the first value of every swept group and then with each other value of
    one group at a time (1 + the other values' count, not the whole grid), and a key is shared where all of those
    agree (the launching config itself is then no job's)."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from fedlm.tracking import store

    def params_of(cfg: DictConfig) -> dict[str, Any]:
        task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        return store.run_params(schema.flat_config(task), dict(cfg.hydra.runtime.choices))

    parser = OverridesParser.create()
    fixed = [
        o.input_line for o in parser.parse_overrides(list(config.hydra.overrides.task)) if not o.is_sweep_override()
    ]
    groups: dict[str, list[str]] = {}  # each swept group (as its override names it, `+experiment/…`): its values
    for line in swept_overrides(config):
        override = parser.parse_override(line)
        group = override.key_or_group
        if override.is_sweep_override() and ("/" in group or group in config.hydra.runtime.choices):
            groups[override.get_key_element()] = list(override.sweep_string_iterator())
    # Jobs: the first value of every swept group, then each other value of one group at a time.
    first = {group: values[0] for group, values in groups.items()}
    jobs = [first] * bool(groups) + [first | {g: v} for g, values in groups.items() for v in values[1:]]
    composed = [
        params_of(compose(config.hydra.job.config_name, [*fixed, *(f"{g}={v}" for g, v in job.items())], True))
        for job in jobs
    ]
    shared = composed[0] if composed else params_of(config)
    shared = {k: v for k, v in shared.items() if all(k in other and other[k] == v for other in composed)}
    # keyed as the children's params are: `+experiment/reddi2020_server` is the group experiment/reddi2020_server
    # (and MLflow refuses a `+` in a key)
    spec = {k.lstrip("+~"): v for k, v in (o.partition("=")[::2] for o in swept_overrides(config))}
    return {k: v for k, v in shared.items() if not _swept(k, list(spec))} | spec


def parent_description(config: DictConfig, children: Sequence[Any] = ()) -> str:
    """The parent's description (Markdown): what was swept, how, and, once the children are done, their final eval
    figures, best (lowest final eval loss) first."""
    definition = sweep_definition(config)
    text = (
        f"**{sweep_name(config)}**: a Hydra multirun, one child run per job, named by its swept values.\n\n"
        f"Swept: `{' '.join(swept_overrides(config)) or 'nothing'}` (sweeper "
        f"`{definition['sweeper'].get('_target_', '').rsplit('.', 1)[-1]}`, launcher "
        f"`{definition['launcher'].get('_target_', '').rsplit('.', 1)[-1]}`; the whole definition: `sweep.yaml`). "
        "The parent's params are what every child shares, and each swept key's sweep spec."
    )
    finished = sorted(
        (c for c in children if names.EVAL_LOSS in c.data.metrics), key=lambda c: c.data.metrics[names.EVAL_LOSS]
    )
    if finished:
        best = finished[0]
        text += (
            f"\n\nBest: **{best.info.run_name}** (run `{best.info.run_id}`), final `{names.EVAL_LOSS}` "
            f"{best.data.metrics[names.EVAL_LOSS]:.4f}.\n\n"
        )
        text += names.runs_table(
            [(c.info.run_name, c.data.metrics) for c in finished],
            [names.EVAL_LOSS, names.EVAL_ACCURACY, names.EVAL_PERPLEXITY],
        )
    return text


STOP_FILE = ".stop_requested"  # in the sweep directory: a stop was asked for (the signal's number)
NOT_STARTED_FILE = ".not_started"  # in the sweep directory: the jobs that did not start, one line each
stopped_by: int | None = None  # in the launching process: the signal that stopped its sweep


def record_not_started(directory: str, overrides: Sequence[str]) -> None:
    with open(os.path.join(directory, NOT_STARTED_FILE), "a") as f:
        f.write(" ".join(overrides) + "\n")


def request_stop(directory: str, signum: int) -> None:
    """Record that the sweep in `directory` was asked to stop: jobs not started yet will not start."""
    path = os.path.join(directory, STOP_FILE)
    if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        with open(path, "w") as f:
            f.write(str(signum))


def stop_requested(directory: str) -> int | None:
    """The signal that asked the sweep in `directory` to stop, if one did."""
    try:
        with open(os.path.join(directory, STOP_FILE)) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def stop_report(children_runs: Sequence[Any], directory: str, swept: Sequence[str]) -> list[str]:
    """What a stopped sweep's jobs became: `seed=0: KILLED after round 2`, one line per child run, then the jobs
    that did not start (by their swept values)."""
    import mlflow

    client, lines = mlflow.MlflowClient(), []
    for child in children_runs:
        rounds = [m.step for m in client.get_metric_history(child.info.run_id, names.metric("train_loss"))]
        done = f" after round {max(rounds)}" if rounds else " before its first round"
        lines.append(f"{child.info.run_name}: {child.info.status}{done if child.info.status != 'FINISHED' else ''}")
    try:
        with open(os.path.join(directory, NOT_STARTED_FILE)) as f:
            jobs = [line.split() for line in f if line.strip()]
    except OSError:
        jobs = []
    for overrides in jobs:
        values = [o for o in overrides if o.partition("=")[0] in swept] or overrides
        lines.append(f"{' '.join(values)}: not started")
    return lines


def _without_resume(overrides: Sequence[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("resume=")]


def _stopped_parent(experiment_id: str, overrides: Sequence[str]):
    """The latest parent run of a sweep with these overrides (but `resume=`) that did not finish, if any."""
    import mlflow

    for run in mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tags.SWEEP_ROLE}` = 'parent' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    ):
        if _without_resume(run.data.tags.get(tags.SWEEP_OVERRIDES, "").split()) == _without_resume(overrides):
            return run
    return None


def find_parent_run(experiment_id: str, directory: str):
    """The parent run (an `mlflow.entities.Run`) of the multirun in `directory`, if the callback created one."""
    import mlflow

    found = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tags.SWEEP_DIR}` = '{directory}' and tags.`{tags.SWEEP_ROLE}` = 'parent'",
        output_format="list",
    )
    return found[0] if found else None


def children(experiment_id: str, parent_run_id: str) -> list:
    """The parent's child runs (`mlflow.entities.Run`), oldest first."""
    import mlflow

    return mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )


class MlflowSweepCallback(Callback):
    """Creates the sweep's parent run before the jobs start and closes it when they are done."""

    def __init__(self) -> None:
        self._parent_id: str | None = None
        self._experiment_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import mlflow
        from mlflow.entities import Param

        from fedlm.conf import preflight
        from fedlm.errors import ConfigError
        from fedlm.tracking import store

        uri = store.tracking_uri_or_default(config.mlflow.tracking_uri)
        try:  # before any job is submitted
            preflight.check_store_shared_by_jobs(uri, config.hydra.launcher.get("_target_", ""))
        except ConfigError as e:
            print(f"fedlm: config error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        mlflow.set_tracking_uri(uri)
        experiment = store.get_or_create_experiment(config.mlflow.experiment_name)
        definition = sweep_definition(config)
        client = mlflow.MlflowClient()
        if "resume=true" in definition["overrides"] and (
            previous := _stopped_parent(experiment.experiment_id, definition["overrides"])
        ):
            # Continuing a stopped sweep: its parent, reopened; the resumed jobs are its children already, and
            # the jobs starting now find it by the new sweep directory.
            self._parent_id, self._experiment_id = previous.info.run_id, experiment.experiment_id
            client.update_run(self._parent_id, status="RUNNING")
            client.set_tag(self._parent_id, tags.SWEEP_DIR, sweep_dir(config.hydra))
            print(f"MLflow sweep parent run {self._parent_id} ({previous.info.run_name}) reopened", flush=True)
            self._watch(config)
            return
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
        self._parent_id, self._experiment_id = parent.info.run_id, experiment.experiment_id
        client.log_dict(self._parent_id, definition, "sweep.yaml")
        try:
            params = parent_params(config)
            client.log_batch(self._parent_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
        except Exception as e:  # params are for reading; failing them must not leave the sweep unwatched
            print(f"fedlm: the sweep parent run gets no params: {e!r}", flush=True)
        client.set_tag(self._parent_id, tags.DESCRIPTION, parent_description(config))
        print(f"MLflow sweep parent run {self._parent_id} ({sweep_name(config)})", flush=True)
        self._watch(config)

    def _watch(self, config: DictConfig) -> None:
        from fedlm.fl import runtime

        # If a job fails, Hydra raises before on_multirun_end: the parent must not stay RUNNING, and a parallel
        # launcher's worker processes must not outlive us.
        atexit.register(self._terminate, "FAILED")
        atexit.register(runtime.kill_children, keep_resource_tracker=True)
        directory = sweep_dir(config.hydra)
        for name in (STOP_FILE, NOT_STARTED_FILE):  # an earlier sweep's, in the same directory: not this one's
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
        runtime.forward_stop_requests(lambda signum: request_stop(directory, signum))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from fedlm.fl import runtime

        stopped = stop_requested(sweep_dir(config.hydra))

        if self._parent_id is not None:
            from fedlm.tracking import plots

            try:  # the children's eval accuracy, overlaid; a figure that fails must not fail the finished sweep
                plots.log_sweep_figure(self._parent_id)
            except Exception as e:
                print(f"fedlm: could not log the sweep figure to run {self._parent_id}: {e!r}", flush=True)
            try:  # the description is for reading; a store that fails it must not leave the parent RUNNING
                self._describe_results(config)
            except Exception as e:
                print(f"fedlm: could not describe the results in run {self._parent_id}: {e!r}", flush=True)
        if stopped is not None:
            self._report_stop(config, stopped)
        self._terminate("FINISHED" if stopped is None else "KILLED")
        # joblib's (loky's) workers idle on after the sweep and exit only some time after we do: end them now.
        runtime.kill_children(timeout=2.0, keep_resource_tracker=True)
        global stopped_by
        stopped_by = stopped  # the command exits with it once Hydra is done (fedlm/run.py)

    def _report_stop(self, config: DictConfig, signum: int) -> None:
        """Each job's fate, and the command that continues the sweep."""
        import signal

        try:
            done = children(self._experiment_id, self._parent_id)
            lines = stop_report(done, sweep_dir(config.hydra), swept_keys(config))
        except Exception as e:  # the store is for the record; the jobs printed their own ends
            lines = [f"(could not read the jobs' runs: {e!r})"]
        print(f"fedlm: the sweep was stopped by {signal.Signals(signum).name}:", flush=True)
        for line in lines:
            print(f"  {line}", flush=True)
        again = " ".join(o for o in config.hydra.overrides.task if not o.startswith("resume="))
        print(
            f"fedlm: continue it with: python -m fedlm.run -m {again} resume=true (the finished jobs are skipped)",
            flush=True,
        )

    def _describe_results(self, config: DictConfig) -> None:
        """The parent's description, now with the children's results, and its best child as a tag."""
        import mlflow

        done = children(self._experiment_id, self._parent_id)
        client = mlflow.MlflowClient()
        client.set_tag(self._parent_id, tags.DESCRIPTION, parent_description(config, done))
        finished = [c for c in done if names.EVAL_LOSS in c.data.metrics]
        if finished:
            best = min(finished, key=lambda c: c.data.metrics[names.EVAL_LOSS])
            client.set_tag(self._parent_id, tags.SWEEP_BEST_RUN, best.info.run_id)

    def _terminate(self, status: str) -> None:
        if self._parent_id is None:
            return
        import mlflow

        mlflow.MlflowClient().set_terminated(self._parent_id, status)
        self._parent_id = None
