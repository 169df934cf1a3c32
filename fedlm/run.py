"""`python -m fedlm.run [group=option ...] [key=value ...]`: one experiment, logged to MLflow.

Its phases cost in this order, and each starts only once the cheaper ones have accepted the input, so bad input
costs seconds, not a pretraining: the config and the data (no TensorFlow, no MLflow: refused in ~2 s), the MLflow
store and the run to resume (~5 s of MLflow import), then TensorFlow and TFF (~8 s of import): the starting model,
the experiment (fedlm/experiment.py), the rounds.
"""

from __future__ import annotations

import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

from fedlm.conf import checks, composition, schema, workers
from fedlm.errors import ConfigError, RunFailed
from fedlm.fl import runtime
from fedlm.tracking import sweep


def run(cfg: DictConfig) -> float:
    """One experiment; returns the final eval loss (MLflow's `eval/loss`: what `hydra/sweeper=optuna` minimizes)."""
    checks.validate(cfg)
    workers.check_workers(list(cfg.runtime.workers))
    startup = runtime.Stopwatch()
    partition = instantiate(cfg.partition)(seed=cfg.seed)  # how the plays become clients
    source = instantiate(cfg.data)(partition=partition, seed=cfg.seed, cache_dir=cfg.cache_dir)  # or the cache's
    if source.population is not None:
        checks.check_population(cfg, *source.population)
    startup.lap("data")

    # MLflow: the results need somewhere to go, and a resumed run must exist, before anything costly.
    from fedlm.tracking import resume as resume_lib
    from fedlm.tracking import store

    store.connect(cfg.mlflow.tracking_uri, cfg.mlflow.experiment_name)
    if cfg.resume is True and HydraConfig.get().mode == RunMode.MULTIRUN:
        # Continuing a stopped sweep: the jobs that finished are skipped, the others resume or start.
        if finished := resume_lib.find_finished_run(cfg):
            print(f"fedlm: resume=true: this job finished already (run {finished.run_id}, {finished.run_name})")
            return finished.eval_loss
        try:
            resume = resume_lib.find_run_to_resume(cfg)
        except ConfigError as e:
            if not str(e).startswith("resume=true: no unfinished run"):
                raise
            print("fedlm: resume=true: this job had not started; starting it", flush=True)
            resume = None
    else:
        resume = resume_lib.find_run_to_resume(cfg) if cfg.resume is not False else None

    # TensorFlow and TFF.
    from fedlm import experiment
    from fedlm.fl import checkpoint

    startup.lap("imports")
    run_dir = resume.directory if resume else checkpoint.RunDirectory(HydraConfig.get().runtime.output_dir)
    # Locked before the starting model: a second process resuming the same run is refused now, not after the
    # pretraining it would wait for (the lookup's own check cannot see a process that has not locked yet).
    with run_dir.locked():
        if resume is None:
            checkpoint.check_fresh(run_dir)
        init_path, init = experiment.build_starting_weights(cfg)
        startup.lap("starting model")
        return _train(cfg, source, init_path, init, run_dir, resume, startup)


def _train(cfg: DictConfig, source, init_path: str, init, run_dir, resume, startup: runtime.Stopwatch) -> float:
    import mlflow
    import tensorflow as tf

    from fedlm import experiment
    from fedlm.conf import preflight
    from fedlm.fl import checkpoint, loop, privacy
    from fedlm.fl.fairness import SampledSoFar
    from fedlm.tracking import artifacts, datasets, ledger, plots, release, runs, sweep, tags

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    sweep_dir = sweep.sweep_dir(hydra_cfg) if hydra_cfg.mode == RunMode.MULTIRUN else None
    for note in source.notes():
        print(f"data: {note}", flush=True)
    for note in init.notes:
        print(f"fedlm: {note}", flush=True)
    model_bytes = sum(w.nbytes for w in init.weights)
    need = preflight.run_dir_bytes_needed(model_bytes, cfg.checkpoint_keep)
    preflight.check_free_space(
        run_dir.path, need, "run directory", f"checkpoint_keep={cfg.checkpoint_keep} checkpoints and the final model"
    )
    # Seeded from here on whether or not pretraining just ran in this process (it seeds and draws too): client
    # shuffles then depend on `seed` alone, so reruns reproduce a run's metrics.
    tf.keras.utils.set_random_seed(cfg.seed)
    startup.lap("imports")

    calibrated_noise = None  # a resumed run keeps the noise its rounds were trained with
    if resume is not None and cfg.aggregator.get("target_epsilon") is not None:
        logged_noise = mlflow.get_run(resume.run_id).data.params.get("aggregator.noise_multiplier")
        calibrated_noise = None if logged_noise is None else float(logged_noise)
    with runtime.tff_context(
        runtime.concurrent_clients(cfg.runtime.max_concurrent_clients, schema.recurrent_kernel_bytes(cfg.model)),
        list(cfg.runtime.workers),
        cfg.runtime.subrounds,
        cfg.runtime.round_timeout_s,
        cfg.runtime.private_local_worker,
    ):
        exp = experiment.build_experiment(cfg, source, init.weights, startup.lap, calibrated_noise)
        rounds = exp.rounds  # fewer than cfg.rounds where aggregator.target_epsilon runs out first
        if exp.privacy is not None:
            _check_budget_left(cfg, exp.privacy, resume)
            print(f"fedlm: {privacy.describe(exp.privacy, cfg.rounds)}", flush=True)
            if cfg.aggregator.zeroing:
                print(
                    "fedlm: privacy: aggregator.zeroing=true adapts TFF's zeroing norm from the clients' update norms "
                    "without noise, which the epsilon does not cover; aggregator.zeroing=false for a guarantee of the "
                    "whole process",
                    flush=True,
                )
        checkpoints = checkpoint.RoundCheckpoints(
            run_dir.checkpoints, cfg.checkpoint_every, cfg.checkpoint_keep, check_state=loop.check_finite_state
        )
        logged = release.logged_steps(resume.run_id) if resume else {}
        writer = ledger.StoreWriter(
            run_dir.checkpoints / ledger.FILE_NAME, mlflow.get_tracking_uri(), cfg.mlflow.store_retry_seconds
        )
        metrics = release.MlflowReleaseManager(already_logged=logged, writer=writer)
        samples = release.SampleReleaseManager(
            lambda: exp.learning_process.get_model_weights(exp.process.state),
            cfg.sample_prompts,
            cfg.sample_temperatures,
            cfg.sample_length,
            cfg.seed,
            cfg.sample_every,
            rounds,
            done_rounds=release.sampled_rounds(resume.run_id) if resume else (),
            writer=writer,
        )
        managers = [metrics, release.ProgressReleaseManager(rounds), samples, loop.DivergenceCheck()]
        fairness = release.FairnessReleaseManager(SampledSoFar(exp.sampler), already_logged=logged, writer=writer)
        managers.append(fairness)
        if exp.communication is not None:
            managers.append(
                release.CommunicationReleaseManager(exp.communication, already_logged=logged, writer=writer)
            )
        if exp.privacy is not None:
            managers.append(release.PrivacyReleaseManager(exp.privacy, already_logged=logged, writer=writer))
        choices = dict(hydra_cfg.runtime.choices)
        extra_params = exp.privacy.params() if exp.privacy is not None else {}
        with runs.open_run(cfg, choices, resume, run_dir, overrides, sweep_dir, metrics, extra_params) as run_id:
            writer.attach(run_id, logged)  # a resumed run first logs the metrics its store lacks
            mlflow.log_dict({r: exp.sampler(r) for r in range(1, rounds + 1)}, "sampled_clients.json")
            # the data's constants: the run's datasets (train, eval) and tags, not metrics
            datasets.log_inputs(source, exp.evaluation.client_ids, exp.evaluation.num_sequences())
            mlflow.set_tags(
                {tags.MODEL_INIT: init_path} | ({tags.MODEL_INIT_NOTES: "; ".join(init.notes)} if init.notes else {})
            )
            if source.oov_characters is not None:
                mlflow.set_tag(tags.DATA_OOV_DISTINCT, source.oov_characters)
            startup.lap("MLflow run")
            print(startup.summary("startup"), flush=True)
            try:
                state = loop.train(
                    exp.process,
                    exp.select_clients,
                    rounds,
                    exp.evaluation.evaluate,
                    exp.evaluation.data,
                    cfg.eval_every,
                    managers,
                    checkpoints,
                )
                writer.flush()  # every round's metrics in the store before the run is finished
                # Hand the trained (not the initial) weights back to Keras; save, log and plot.
                final_model = artifacts.portable_copy(exp.learning_process.get_model_weights(state))
                path = writer.call(
                    lambda: artifacts.log_final_model(  # with the last round's metrics linked
                        final_model, str(run_dir.path), cfg.mlflow.registered_model_name, step=rounds
                    ),
                    "the final model",
                )
            except BaseException as e:
                runs.end_early(checkpoints, e, run_id, run_dir, overrides, writer)
                raise
            try:  # the learning curves; a figure that fails must not fail the finished run
                plots.log_run_figure(run_id, step=rounds)
            except Exception as e:
                print(f"fedlm: could not log the learning-curve figure to run {run_id}: {e!r}", flush=True)
            try:  # the last evaluation's per-client histogram and figures
                fairness.log_final(run_id)
            except Exception as e:
                print(f"fedlm: could not log the per-client accuracy histogram to run {run_id}: {e!r}", flush=True)
            if rounds < cfg.rounds:  # the budget ran out first: a finished run of the rounds it allowed
                writer.call(lambda: mlflow.set_tag(tags.PRIVACY_STOPPED_AFTER_ROUND, str(rounds)), "the budget's tag")
            writer.finish("FINISHED", wait=True)
        final = metrics.latest  # said inside the TFF context: leaving it is where a late signal stops the process
        print(
            f"final eval_loss {final['eval_loss']:.4f}  eval_accuracy {final['eval_accuracy']:.4f}  "
            f"eval_perplexity {final['eval_perplexity']:.2f}; model at {path}",
            flush=True,
        )
        if exp.privacy is not None:
            spent = exp.privacy.epsilon(rounds)
            stopped = f"; the budget stopped it after round {rounds} of {cfg.rounds}" if rounds < cfg.rounds else ""
            print(
                f"privacy: epsilon {spent:.4g} at delta {exp.privacy.delta:.3g} after {rounds} rounds{stopped}",
                flush=True,
            )
    return float(final["eval_loss"])


def _check_budget_left(cfg: DictConfig, ledger, resume) -> None:
    """A resumed run whose budget (aggregator.target_epsilon) is spent has no round left to train: say so."""
    if resume is not None and resume.round >= ledger.rounds and ledger.rounds < cfg.rounds:
        raise ConfigError(
            f"resume: aggregator.target_epsilon={ledger.target_epsilon:g} is spent after round {ledger.rounds} "
            f"(epsilon {ledger.epsilon(ledger.rounds):.4g}; round {ledger.rounds + 1} would reach "
            f"{ledger.epsilon(ledger.rounds + 1):.4g}), where the run stopped: no round of rounds={cfg.rounds} is "
            "left within the budget; start a new run with a larger aggregator.target_epsilon"
        )


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _main(cfg: DictConfig) -> float:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun and (signum := sweep.stop_requested(sweep.sweep_dir(HydraConfig.get()))):
        print(f"fedlm: this job does not start: the sweep was stopped by {signal.Signals(signum).name}", flush=True)
        sweep.record_not_started(sweep.sweep_dir(HydraConfig.get()), HydraConfig.get().overrides.task)
        return float("nan")  # no result (Optuna records a failed trial)
    try:
        with runtime.startup():
            return run(cfg)
    except runtime.Interrupted as e:
        if not multirun:
            raise
        # The job ended KILLED, resumable; the sweep goes on to its end (no new job starts), where the parent run
        # reports each job's end. Raised on, it would make joblib kill the other jobs' processes mid-round.
        sweep.request_stop(sweep.sweep_dir(HydraConfig.get()), int(e.code) - 128)
        if isinstance(e, runtime.StartupInterrupted):  # no run of it exists: the sweep's report says so
            sweep.record_not_started(sweep.sweep_dir(HydraConfig.get()), HydraConfig.get().overrides.task)
        return float("nan")
    except ConfigError as e:
        print(f"fedlm: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunFailed as e:
        print(f"fedlm: error: {e}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records this job as failed and goes on with the sweep's other jobs
        raise SystemExit(1) from None


def main() -> None:
    schema.register()
    composition.exit_on_bad_command_line("config", sys.argv[1:])
    _main()
    if sweep.stopped_by is not None:  # a stopped sweep's status, as a single run's: 130 for Ctrl-C, 143 for SIGTERM
        raise SystemExit(128 + sweep.stopped_by)


if __name__ == "__main__":
    main()
