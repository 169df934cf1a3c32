"""A tiny real run through `python -m fedlm.run`, checked in MLflow, and checked for leftover processes."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from tests.conftest import TINY, compose_config, keras_eval_data, run_fedlm


def _metric_steps(client: mlflow.MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


@pytest.mark.e2e
def test_run_logs_rounds_params_and_artifacts(tiny_run, tiny_run_id):
    assert "round 2/2" in tiny_run.stdout and "ETA" in tiny_run.stdout
    client = mlflow.MlflowClient()
    run = mlflow.get_run(tiny_run_id)
    assert run.info.status == "FINISHED"
    for key in ("eval/loss", "eval/accuracy"):
        assert sorted(_metric_steps(client, run.info.run_id, key)) == [0, 1, 2]
    for key in ("train/loss", "train/accuracy"):
        assert sorted(_metric_steps(client, run.info.run_id, key)) == [1, 2]
    assert run.data.params["model.rnn_units"] == "16" and run.data.params["rounds"] == "2"
    assert int(run.data.tags["fedlm.data_clients"]) > 800
    assert "model=tiny" in run.data.tags["fedlm.overrides"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model", "samples", "plots", "sampled_clients.json"} <= artifacts


@pytest.mark.e2e
def test_step0_eval_equals_the_starting_model(tiny_run_id):
    """Round 0 is the pretrained model evaluated directly: the weights went into TFF's state intact."""
    import tensorflow as tf

    from fedlm.model import metrics, pretrain

    cfg = compose_config(TINY)
    eval_data = keras_eval_data(cfg)
    start = metrics.compile_for_eval(
        tf.keras.models.load_model(
            pretrain.cache_path(cfg.model, cfg.pretrain, cfg.data.proxy_genres, cfg.cache_dir), compile=False
        )
    )
    direct = start.evaluate(eval_data, verbose=0, return_dict=True)
    run = mlflow.get_run(tiny_run_id)
    logged = _metric_steps(mlflow.MlflowClient(), run.info.run_id, "eval/loss")
    np.testing.assert_allclose(logged[0], direct["loss"], rtol=1e-5)
    assert logged[2] != logged[0]  # and training then moved it


@pytest.mark.e2e
def test_final_model_is_the_trained_one(tiny_run_id):
    import tensorflow as tf

    from fedlm.model import pretrain

    run = mlflow.get_run(tiny_run_id)
    path = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model/final_model.h5")
    final = tf.keras.models.load_model(path, compile=False).get_weights()
    start = tf.keras.models.load_model(
        pretrain.cache_path(*_pretrain_args(compose_config(TINY))), compile=False
    ).get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(final, start))


@pytest.mark.e2e
def test_bad_value_fails_before_training(tmp_path):
    result = run_fedlm(["rounds=-1"], tmp_path)
    assert result.returncode == 2
    assert "rounds=-1" in result.stdout and "round 0" not in result.stdout


@pytest.mark.e2e
def test_same_seed_same_clients_and_metrics_other_seed_other_clients(tiny_run_id, tmp_path):
    """The same config and seed in another process draws the same clients and logs the same metrics."""
    result = run_fedlm(["-m", *TINY, "seed=0,1", "mlflow.experiment_name=repro"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    client = mlflow.MlflowClient()
    first = mlflow.get_run(tiny_run_id)
    children = {
        r.data.params["seed"]: r
        for r in mlflow.search_runs(experiment_names=["repro"], output_format="list")
        if "mlflow.parentRunId" in r.data.tags
    }

    def sampled(run) -> dict:
        return mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/sampled_clients.json")

    assert sampled(children["0"]) == sampled(first) and len(sampled(first)) == 2
    assert sampled(children["1"]) != sampled(first)
    for key in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy"):
        want, got = _metric_steps(client, first.info.run_id, key), _metric_steps(client, children["0"].info.run_id, key)
        assert sorted(got) == sorted(want) and want
        np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5)


@pytest.mark.e2e
def test_a_dp_run_logs_the_epsilon_each_round_spends_and_stops_at_its_budget(tmp_path):
    """aggregator=dp: `privacy_epsilon` every round is dp_accounting's for the run's mechanism (fixed-size sampling
    of 6 of the 894 clients without replacement, noise multiplier 0.5), with delta and the population as params;
    with aggregator.stop_at_epsilon the run ends, finished, after the last round within aggregator.target_epsilon."""
    from fedlm.fl import privacy
    from tests.fl.test_privacy import direct

    population = 894  # the default data's training clients (checked below)
    delta = 1 / population**1.1

    def spent(rounds: int) -> float:
        return direct(0.5, rounds, privacy.WITHOUT_REPLACEMENT, "rdp", population=population, clients=6, delta=delta)

    budget = (spent(2) + spent(3)) / 2  # allows 2 of the 4 rounds
    dp = ["aggregator=dp", "client_weighting=uniform", "clients_per_round=6", "aggregator.stop_at_epsilon=true"]
    result = run_fedlm(
        [*TINY, "rounds=4", *dp, f"aggregator.target_epsilon={budget}", "mlflow.experiment_name=dp"], tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "it allows 2 of the 4 rounds" in result.stdout and "round 2/2" in result.stdout
    (run,) = mlflow.search_runs(experiment_names=["dp"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.tags["fedlm.privacy_stopped_after_round"] == "2"
    assert run.data.tags["fedlm.data_clients"] == str(population) == run.data.params["population"]
    assert float(run.data.params["aggregator.delta"]) == pytest.approx(delta, rel=1e-12)
    assert run.data.params["aggregator.accountant"] == "rdp"
    logged = _metric_steps(mlflow.MlflowClient(), run.info.run_id, "privacy_epsilon")
    assert sorted(logged) == [0, 1, 2]
    for step, value in logged.items():
        assert value == pytest.approx(spent(step) if step else 0.0, rel=1e-6)
    assert logged[2] <= budget < spent(3)


def _pretrain_args(cfg):
    return cfg.model, cfg.pretrain, cfg.data.proxy_genres, cfg.cache_dir


@pytest.mark.e2e
def test_a_dirichlet_partition_trains_and_logs_its_statistics(tmp_path):
    result = run_fedlm(
        [*TINY, "partition=dirichlet", "partition.alpha=0.1", "mlflow.experiment_name=partition"], tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "data: partition=dirichlet num_clients=100 alpha=0.1: 100 clients (100 with a test split)" in result.stdout
    (run,) = mlflow.search_runs(experiment_names=["partition"], output_format="list")
    assert run.data.params["partition"] == "dirichlet" and run.data.params["partition.alpha"] == "0.1"
    assert run.data.tags["fedlm.data_clients"] == "100" and float(run.data.tags["fedlm.data_heterogeneity_jsd"]) > 0
    sampled = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/sampled_clients.json")
    assert all(c.startswith("DIRICHLET_") for clients in sampled.values() for c in clients)
    (train,) = [i.dataset for i in run.inputs.dataset_inputs if i.dataset.name == "shakespeare-train"]
    assert '"partition": "dirichlet"' in train.profile and '"partition_alpha": 0.1' in train.profile


@pytest.mark.e2e
def test_a_stacked_lstm_from_a_random_start_trains_saves_and_generates(tmp_path):
    """`model=reddi model.init=random` in small: 2 x LSTM (FastLSTM) from seeded Keras initializers, no pretraining."""
    import tensorflow as tf

    from fedlm.model import pretrain

    args = [*TINY, "model.cell=lstm", "model.layers=2", "model.init=random", "mlflow.experiment_name=lstm"]
    result = run_fedlm(args, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "model.init=random: Embedding 8 -> LSTM 16 x 2" in result.stdout and "pretrain step" not in result.stdout
    (run,) = mlflow.search_runs(experiment_names=["lstm"], output_format="list")
    cfg = compose_config(args)
    start_file = pretrain.random_start_path(cfg.model, cfg.seed, cfg.cache_dir)
    assert run.data.tags["fedlm.model_init"] == start_file and "seed=0" in run.data.tags["fedlm.model_init_notes"]
    assert run.data.params["model.cell"] == "lstm" and run.data.params["model.layers"] == "2"
    start = tf.keras.models.load_model(start_file, compile=False)
    path = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model/final_model.h5")
    final = tf.keras.models.load_model(path, compile=False)  # plain Keras: stock LSTMs
    assert [type(layer) for layer in final.layers[1:-1]] == [tf.keras.layers.LSTM] * 2
    assert any(not np.allclose(a, b) for a, b in zip(final.get_weights(), start.get_weights()))
    text = run_fedlm(["mlflow.experiment_name=lstm", "length=20"], tmp_path / "generate", module="fedlm.generate")
    assert text.returncode == 0 and f"run {run.info.run_id}" in text.stdout, text.stdout[-2000:]


@pytest.mark.e2e
def test_scheduled_learning_rates_train_and_are_logged_each_round(tmp_path):
    """A cosine client schedule over the run's 2 rounds (0.5, then 0.25), a 2-round server warm-up (0.5, then 1)."""
    args = [*TINY, "schedule=cosine", "server_schedule=constant", "server_schedule.warmup_rounds=2"]
    result = run_fedlm([*args, "mlflow.experiment_name=schedules"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "client_lr 0.25  server_lr 1" in result.stdout
    (run,) = mlflow.search_runs(experiment_names=["schedules"], output_format="list")
    client = mlflow.MlflowClient()
    for key, want in (("train/client_learning_rate", [0.5, 0.25]), ("train/server_learning_rate", [0.5, 1.0])):
        steps = _metric_steps(client, run.info.run_id, key)
        assert sorted(steps) == [1, 2] and [steps[1], steps[2]] == pytest.approx(want), key
    params = run.data.params
    assert params["schedule"] == "cosine" and params["schedule.total_rounds"] == "2"
    assert params["server_schedule.warmup_rounds"] == "2" and "schedule._target_" not in params
    assert run.info.run_name.startswith("fedavg sgd(cosine)→sgd 2c")


@pytest.mark.e2e
def test_a_compressed_federated_run_logs_its_bytes_and_its_clients_fairness(tmp_path):
    """aggregator=compression, eval=federated, one eval client among the two trained every round: the bytes of
    every round and their running total; the eval clients' quantiles and the trained client apart from the others,
    from the same per-client figures the run logs at its end with their histogram."""
    from fedlm.data import client_data, shakespeare
    from fedlm.fl import evaluation

    cfg = compose_config(TINY)
    text = shakespeare.build_federated_text(
        shakespeare.load_plays(), cfg.data.proxy_genres, cfg.data.test_fraction, cfg.seed
    )
    eval_ids = evaluation.pick_eval_clients(client_data.to_client_data(text.test).client_ids, cfg.eval_clients, 0)
    other = next(c for c in sorted(text.train) if c not in eval_ids)
    args = [
        *TINY,
        "aggregator=compression",
        "eval=federated",
        "sampling=fixed",
        f"sampling.clients=[{eval_ids[0]},{other}]",
    ]
    result = run_fedlm([*args, "mlflow.experiment_name=ledgers"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    (run,) = mlflow.search_runs(experiment_names=["ledgers"], output_format="list")
    client = mlflow.MlflowClient()
    down, up, total = (_metric_steps(client, run.info.run_id, f"comm/{k}_bytes") for k in ("down", "up", "total"))
    from fedlm.model import char_rnn

    weights = sum(w.size for w in char_rnn.build_configured(cfg.model, random_init=False).get_weights())
    # float32: the weights, the client lr, and the adaptive zeroing and clipping norms with their estimates
    assert down == {0: 0, 1: 2 * (4 * weights + 4 + 4 * 4), 2: 2 * (4 * weights + 4 + 4 * 4)}
    assert up[1] == up[2] >= 2 * 4 * weights  # no tensor of the tiny model is large enough to be quantized
    assert total == {0: 0, 1: down[1] + up[1], 2: 2 * (down[1] + up[1])}

    final = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/eval/clients_final.json")
    assert final["client_id"] == eval_ids and final["round"] == 2
    assert final["sampled"] == [c == eval_ids[0] for c in eval_ids]
    accuracy = np.array(final["accuracy"])
    logged = {k: _metric_steps(client, run.info.run_id, f"eval/{k}") for k in ("seen_clients", "seen_accuracy")}
    assert logged["seen_clients"] == {1: 1.0, 2: 1.0}
    assert logged["seen_accuracy"][2] == pytest.approx(accuracy[0])
    assert _metric_steps(client, run.info.run_id, "eval/unseen_accuracy")[2] == pytest.approx(accuracy[1:].mean())
    p50 = _metric_steps(client, run.info.run_id, "eval/client_accuracy_p50")
    assert sorted(p50) == [0, 1, 2] and p50[2] == pytest.approx(np.median(accuracy))
    assert "plots/client_accuracy.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
