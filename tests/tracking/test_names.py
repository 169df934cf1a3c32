"""What runs, sweeps and metrics are called in MLflow: short, meaningful, without infrastructure or escaping."""

from __future__ import annotations

from fedlm.tracking import names

GROUPS = {
    "optimizer",
    "server_optimizer",
    "client_weighting",
    "algorithm",
    "model",
    "aggregator",
    "experiment",
    "hydra/launcher",
}
CHOICES = {
    "algorithm": "fedavg",
    "optimizer": "sgd",
    "server_optimizer": "sgd",
    "model": "small",
    "aggregator": "dp",
    "experiment": None,
    "hydra/launcher": "joblib",
}


def test_metric_names_are_grouped_by_split_and_map_back():
    for fedlm, shown in (
        ("eval_loss", "eval/loss"),
        ("train_bits_per_char", "train/bits_per_char"),
        ("round_seconds", "train/seconds"),
        ("eval_seconds", "eval/seconds"),
        ("client_learning_rate", "train/client_learning_rate"),
        ("server_learning_rate", "train/server_learning_rate"),
    ):
        assert names.metric(fedlm) == shown and names.fedlm_metric(shown) == fedlm


def test_override_values_lose_hydras_escaping():
    (uri, prompts) = names.parse_overrides([r"mlflow.tracking_uri=sqlite\:////tmp/x.db", 'sample_prompts=["a, b",c]'])
    assert (uri.key, uri.text) == ("mlflow.tracking_uri", "sqlite:////tmp/x.db")
    assert prompts.text == '["a, b", "c"]'


def test_a_sweep_child_is_named_by_its_swept_values_only():
    overrides = [
        r"mlflow.tracking_uri=sqlite\:////tmp/x.db",
        "optimizer=adam",
        "model=tiny",
        "client_weighting=uniform",
    ]
    assert names.child_name(overrides, ["optimizer", "client_weighting"], GROUPS) == "adam · uniform"
    trial = ["optimizer.learning_rate=0.38123456", "server_optimizer.learning_rate=1.1", "local_epochs=2"]
    assert (
        names.child_name(trial, ["optimizer.learning_rate", "server_optimizer.learning_rate", "local_epochs"], GROUPS)
        == "client lr=0.381 · server lr=1.1 · local_epochs=2"
    )
    assert names.child_name(["runtime.max_concurrent_clients=1"], ["runtime.max_concurrent_clients"], GROUPS) is None


def test_a_single_run_is_named_by_a_summary_without_infrastructure():
    overrides = [
        r"mlflow.tracking_uri=sqlite\:////tmp/x.db",
        "hydra/launcher=joblib",
        "aggregator=dp",
        "rounds=3",
        "cache_dir=/tmp/c",
    ]
    assert names.run_summary(CHOICES, 10, overrides) == "fedavg sgd→sgd 10c dp"
    assert (
        names.run_summary(CHOICES | {"experiment": "tutorial"}, 2, ["experiment=tutorial"])
        == "tutorial: fedavg sgd→sgd 2c"
    )
    scheduled = CHOICES | {"schedule": "cosine", "server_schedule": "constant"}
    assert names.run_summary(scheduled, 10, ["schedule=cosine", "aggregator=dp"]) == "fedavg sgd(cosine)→sgd 10c dp"
    # FedSGD's clients take no step: no client optimizer in its name
    assert names.run_summary(CHOICES | {"algorithm": "fedsgd"}, 10, ["algorithm=fedsgd"]) == "fedsgd →sgd 10c"


def test_the_setup_line_names_a_schedule_and_its_warm_up():
    from tests.conftest import compose_config

    cfg = compose_config(["schedule=cosine", "server_schedule=constant", "server_schedule.warmup_rounds=3"])
    choices = {"optimizer": "sgd", "server_optimizer": "sgd", "schedule": "cosine", "server_schedule": "constant"}
    line = names.setup_line(cfg, choices)
    assert "client `sgd` (lr 0.5, `cosine` schedule) → server `sgd` (lr 1.0, 3 warm-up rounds)" in line
    assert "schedule" not in names.setup_line(compose_config(), {**choices, "schedule": "constant"}).split("model")[0]
    assert names.label("server_schedule.decay_rate") == "server schedule decay_rate"
    fedsgd = names.setup_line(compose_config(["algorithm=fedsgd"]), {**choices, "algorithm": "fedsgd"})
    assert "; no client optimizer (a gradient at the server model) → server `sgd` (lr 1.0" in fedsgd


def test_a_sweep_parent_is_named_by_what_it_varies():
    assert names.sweep_name(["optimizer", "client_weighting"], None) == "optimizer × client_weighting"
    assert names.sweep_name(["optimizer.learning_rate", "local_epochs"], "optuna") == "optuna: client lr × local_epochs"


def test_a_run_description_shows_the_start_and_the_end_but_no_machine_key():
    text = names.run_description(
        "adam · uniform",
        "10 rounds of `fedavg`.",
        ["optimizer=adam", "cache_dir=/tmp/c"],
        {"eval/loss": 1.878, "eval/accuracy": 0.466},
        {"eval/loss": 1.752},
        10,
        "runs:/x/m",
    )
    assert "Overrides: `optimizer=adam`" in text and "cache_dir" not in text
    assert "| `eval/loss` | 1.878 | 1.752 |" in text and "| `eval/accuracy` | 0.466 | – |" in text
    assert 'load_model("runs:/x/m")' in text


def test_an_appended_group_swept_by_an_experiment_file_names_its_children():
    """experiment=reddi2020_shakespeare sweeps `+experiment/reddi2020_server: fedavg,…`: each child is named by its
    server setup, not only by its seed (five children all called `seed=0` before)."""
    from hydra import compose, initialize_config_dir

    from fedlm.tracking import sweep
    from tests.conftest import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="config", overrides=["experiment=reddi2020_shakespeare"], return_hydra_config=True)
    swept = sweep.swept_keys(cfg)
    assert swept == ["experiment/reddi2020_server", "seed"]
    job = ["+experiment/reddi2020_server=fedadam", "seed=1", "experiment=reddi2020_shakespeare"]
    assert names.child_name(job, swept, {*GROUPS, "experiment/reddi2020_server"}) == "fedadam · seed=1"


def test_the_parent_of_an_appended_group_sweep_takes_its_params(tmp_path):
    """The parent of `experiment=reddi2020_shakespeare` (or mcmahan2017's) got no params, no description and no
    stop handling: MLflow refused its sweep-spec param `+experiment/reddi2020_server` (no `+` in a key) inside the
    sweep callback. Its params are keyed as the children's are, and MLflow takes them."""
    import mlflow
    from hydra import compose, initialize_config_dir
    from mlflow.entities import Param

    from fedlm.tracking import sweep
    from tests.conftest import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name="config", overrides=["experiment=mcmahan2017_shakespeare"], return_hydra_config=True)
        params = sweep.parent_params(cfg)  # composes each swept group's options, as in Hydra's launching process
    assert params["experiment/mcmahan2017_algorithm"] == "fedavg,fedsgd" and params["partition"] == "role,iid"
    assert params["experiment"] == "mcmahan2017_shakespeare" and params["seq_length"] == 80
    assert "seed" in params and not [k for k in params if k.startswith(("+", "~"))]
    # what the two algorithm files set alike is shared; what they set apart is not (it showed algorithm=fedavg)
    assert params["batch_size"] == 10 and params["server_optimizer.learning_rate"] == 1.0
    assert not [k for k in params if k.split(".")[0] in ("algorithm", "optimizer", "schedule")], params
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/store.db")
    run = client.create_run(client.create_experiment("sweeps"))
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])
    assert client.get_run(run.info.run_id).data.params["experiment/mcmahan2017_algorithm"] == "fedavg,fedsgd"
