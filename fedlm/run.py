"""`python -m fedlm.run [key=value ...]`: compose the config, then data and model -> process -> loop -> MLflow."""
from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedlm import config as config_lib


def run(cfg: DictConfig) -> float:
    """One experiment; returns the final eval loss (what `hydra/sweeper=optuna` minimizes)."""
    config_lib.validate(cfg)  # before TensorFlow is imported: bad input costs nothing
    from fedlm import data as data_lib

    # Data: parsed without TensorFlow, so population checks also cost nothing.
    text = data_lib.build_federated_text(data_lib.load_plays(), cfg.data.proxy_genres, cfg.data.test_fraction, cfg.seed)
    if cfg.data.name == config_lib.DataName.shakespeare:
        config_lib.check_population(cfg, list(text.train), len(text.test))

    import mlflow
    import tensorflow as tf
    from hydra.utils import instantiate

    from fedlm import artifacts, federated, model as model_lib, model_init, plots, preprocessing, pretrain, runtime
    from fedlm import sampling, sweep, tracking, training

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    overrides = list(hydra_cfg.overrides.task)
    mlflow.set_tracking_uri(tracking.tracking_uri_or_default(cfg.mlflow.tracking_uri))

    if cfg.data.name == config_lib.DataName.tff_shakespeare:
        train_data, test_data = data_lib.load_tff_shakespeare(cfg.data.cache_dir)
        config_lib.check_population(cfg, train_data.client_ids, len(test_data.client_ids))
        client_sizes = None
    else:
        train_data, test_data = data_lib.to_client_data(text.train), data_lib.to_client_data(text.test)
        client_sizes = text.client_sizes()

    # Model: the pretrained start.
    def keras_model() -> tf.keras.Model:
        return model_lib.build_model(cfg.model.embedding_dim, cfg.model.rnn_units)

    init_path = pretrain.pretrained_model_path(cfg)
    start_model = keras_model()
    init = model_init.load_initial_weights(init_path, start_model)  # a file that does not fit: ConfigError
    start_model.set_weights(init.weights)
    for note in init.notes:
        print(f"fedlm: {note}", flush=True)
    # Seed TF from here on whether or not pretraining just ran in this process (it seeds and draws too):
    # client shuffles then depend on `seed` alone, so reruns reproduce a run's metrics.
    tf.keras.utils.set_random_seed(cfg.seed)

    with runtime.tff_context():
        import tensorflow_federated as tff

        try:
            client_optimizer = instantiate(cfg.optimizer)
            server_optimizer = instantiate(cfg.server_optimizer)
        except Exception as e:
            raise config_lib.ConfigError(f"optimizer/server_optimizer: cannot build from {dict(cfg.optimizer)} / "
                                         f"{dict(cfg.server_optimizer)}: {e}") from e
        model_fn = federated.build_model_fn(keras_model, cfg.seq_length)
        process = federated.build_learning_process(
            model_fn, client_optimizer, server_optimizer,
            cfg.client_weighting, cfg.algorithm, cfg.aggregator, cfg.clients_per_round,
        )
        initial = training.LatestState(
            federated.StartFrom(process, tff.learning.models.ModelWeights.from_model(start_model))
        )

        def client_dataset(cid: str, round_num: int) -> tf.data.Dataset:
            return preprocessing.client_dataset(
                train_data.create_tf_dataset_for_client(cid), cfg.seq_length, cfg.batch_size, cfg.shuffle_buffer,
                seed=cfg.seed * 100_003 + round_num, local_epochs=cfg.local_epochs,
                max_batches=cfg.max_batches_per_client,
            )

        if cfg.sampling.name == config_lib.SamplingName.size_weighted and client_sizes is None:
            client_sizes = data_lib.client_sizes(train_data)
        sampler = sampling.build_client_sampler(
            cfg.sampling.name, train_data.client_ids, cfg.clients_per_round, cfg.seed, cfg.sampling.clients, client_sizes
        )
        select = training.build_client_selection(sampler, client_dataset)
        eval_data = training.build_eval_data(test_data, cfg.eval_clients, cfg.seed, cfg.seq_length, cfg.eval_batch_size)
        if cfg.eval.mode == config_lib.EvalMode.federated:
            evaluate = training.build_federated_evaluation(process, model_fn)
            eval_input = training.build_eval_client_data(
                test_data, cfg.eval_clients, cfg.seed, cfg.seq_length, cfg.eval_batch_size)
        else:
            evaluate, eval_input = training.build_keras_evaluation(process, keras_model()), eval_data
        metrics_manager = tracking.MlflowReleaseManager()
        samples_manager = tracking.SampleReleaseManager(
            lambda: process.get_model_weights(initial.state), cfg.sample_prompts, cfg.sample_temperatures,
            cfg.sample_length, cfg.seed, cfg.sample_every, cfg.rounds,
        )

        sweep_dir = sweep.sweep_dir(hydra_cfg) if multirun else None
        with tracking.start_run(cfg.mlflow.experiment_name, overrides, sweep_dir) as active:
            print(f"MLflow run {active.info.run_id} in {mlflow.get_tracking_uri()}", flush=True)
            tracking.log_config(tracking.flatten(config_lib.to_container(cfg), sep="."), OmegaConf.to_yaml(cfg, resolve=True))
            mlflow.log_dict({r: sampler(r) for r in range(1, cfg.rounds + 1)}, "sampled_clients.json")
            mlflow.log_metrics(text.stats() | {"eval_sequences": float(sum(1 for _ in eval_data.unbatch()))})
            mlflow.set_tag("fedlm.model_init", init_path)
            if init.notes:
                mlflow.set_tag("fedlm.model_init_notes", "; ".join(init.notes))
            tracking.log_random_guess()
            try:
                state = training.train(
                    initial, select, cfg.rounds, evaluate, eval_input, cfg.eval_every,
                    [metrics_manager, tracking.ProgressReleaseManager(cfg.rounds), samples_manager],
                )
            except runtime.Interrupted:
                mlflow.end_run("KILLED")
                raise
            # Hand the trained (not the initial) weights back to Keras; save, log and plot.
            final_model = artifacts.portable_copy(process.get_model_weights(state))
            path = artifacts.log_final_model(final_model, hydra_cfg.runtime.output_dir,
                                             cfg.mlflow.registered_model_name)
            plots.log_run_figure(active.info.run_id)
            final = metrics_manager.latest
            print(f"final eval_loss {final['eval_loss']:.4f}  eval_accuracy {final['eval_accuracy']:.4f}  "
                  f"eval_perplexity {final['eval_perplexity']:.2f}; model at {path}", flush=True)
    return float(final["eval_loss"])


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except config_lib.ConfigError as e:
        print(f"fedlm: config error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
