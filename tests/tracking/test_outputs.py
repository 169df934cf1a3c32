"""What users look at after a run: metrics, the samples table, the model, the plots, and the MLflow server."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import mlflow
import numpy as np
import pytest

from fedlm import vocab
from fedlm.model import metrics
from fedlm.tracking import plots, release, store, tags
from tests.conftest import TINY, TINY_RUN_EXPERIMENT, compose_config, keras_eval_data, session_processes


def _history(run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(run_id, key)}


@pytest.mark.e2e
def test_metrics_per_round(tiny_run_id):
    run = mlflow.get_run(tiny_run_id)
    for split, steps in (("train", [1, 2]), ("eval", [0, 1, 2])):
        ce = _history(tiny_run_id, f"{split}/cross_entropy")
        assert sorted(ce) == steps
        for step, nats in ce.items():
            assert _history(tiny_run_id, f"{split}/perplexity")[step] == pytest.approx(math.exp(nats))
            assert _history(tiny_run_id, f"{split}/bits_per_char")[step] == pytest.approx(nats / math.log(2))
            assert 0 <= _history(tiny_run_id, f"{split}/oov_rate")[step] < 0.01
        assert all(v > 0 for v in _history(tiny_run_id, f"{split}/tokens").values())
    assert set(_history(tiny_run_id, "train/clients").values()) == {2.0}  # TINY: clients_per_round=2
    assert set(_history(tiny_run_id, "eval/tokens").values()) == {_history(tiny_run_id, "eval/tokens")[0]}  # fixed set
    for key in ("train/seconds", "eval/seconds", "train/sequences"):
        assert sorted(_history(tiny_run_id, key)) == ([0, 1, 2] if key == "eval/seconds" else [1, 2])
    for key, value in vocab.RANDOM_GUESS.items():  # a constant: a tag, not a metric
        assert float(run.data.tags[f"fedlm.{key}"]) == pytest.approx(value, rel=1e-5)


@pytest.mark.e2e
def test_samples_table_at_round_0_and_the_last(tiny_run_id):
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{tiny_run_id}/{release.SAMPLES_TABLE}"))
    assert table["columns"] == ["round", "prompt", "temperature", "text"]
    cfg = compose_config(TINY)
    rows = table["data"]
    assert sorted({r[0] for r in rows}) == [0, cfg.rounds]  # sample_every=5 > rounds: the first and last only
    assert len(rows) == 2 * len(cfg.sample_prompts) * len(cfg.sample_temperatures)
    assert {r[1] for r in rows} == set(cfg.sample_prompts)
    assert all(len(r[3]) == cfg.sample_length for r in rows)
    final = json.loads(mlflow.artifacts.load_text(f"runs:/{tiny_run_id}/{release.FINAL_SAMPLES_TABLE}"))
    assert final["data"] == [r for r in rows if r[0] == cfg.rounds]  # the last round's rows, alone


@pytest.mark.e2e
def test_logged_model_evaluates_to_the_last_logged_eval_loss(tiny_run_id):
    """The weights handed back from TFF are the ones evaluated last: the MLflow model reproduces eval_loss exactly."""
    from fedlm.tracking import artifacts

    loaded = mlflow.tensorflow.load_model(f"runs:/{tiny_run_id}/{artifacts.LOGGED_MODEL_NAME}")
    cfg = compose_config(TINY)
    eval_data = keras_eval_data(cfg)
    result = metrics.compile_for_eval(loaded).evaluate(eval_data, verbose=0, return_dict=True)
    logged = _history(tiny_run_id, "eval/loss")
    assert result["loss"] == logged[max(logged)]
    assert result["accuracy"] == _history(tiny_run_id, "eval/accuracy")[max(logged)]
    # The plain Keras file holds the same weights.
    import tensorflow as tf

    path = mlflow.artifacts.download_artifacts(f"runs:/{tiny_run_id}/model/{artifacts.KERAS_FILE}")
    for a, b in zip(tf.keras.models.load_model(path, compile=False).get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_final_model_can_be_registered(tmp_path):
    from fedlm.model import char_rnn
    from fedlm.tracking import artifacts

    store.get_or_create_experiment("registry")
    m = char_rnn.build_model(4, 8)
    with mlflow.start_run() as run:
        artifacts.log_final_model(m, str(tmp_path), registered_model_name="fedlm-test-model")
    (version,) = mlflow.MlflowClient().search_model_versions("name = 'fedlm-test-model'")
    assert version.run_id == run.info.run_id
    loaded = mlflow.tensorflow.load_model(f"models:/fedlm-test-model/{version.version}")
    for a, b in zip(loaded.get_weights(), m.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert mlflow.get_run(run.info.run_id).data.tags[tags.KERAS_MODEL] == "model/final_model.h5"


@pytest.mark.e2e
def test_run_figure_is_logged_and_shows_the_logged_curves(tiny_run_id):
    assert plots.RUN_FIGURE in {a.path for a in mlflow.MlflowClient().list_artifacts(tiny_run_id, "plots")}
    fig = plots.run_figure(tiny_run_id)
    loss_ax, acc_ax = fig.axes
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    for key in ("train/loss", "eval/loss", "train/accuracy", "eval/accuracy"):
        history = _history(tiny_run_id, key)
        assert list(lines[key].get_xdata()) == sorted(history)
        assert list(lines[key].get_ydata()) == [history[s] for s in sorted(history)]
    # the same figure as an image at the last round, which the chart view shows across runs
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(tiny_run_id, "images")}
    assert any(p.startswith(f"images/{plots.RUN_IMAGE_KEY}%step%2%") and p.endswith(".png") for p in logged), logged


def test_sweep_figure_overlays_the_childrens_eval_accuracy():
    client = mlflow.MlflowClient()
    experiment = store.get_or_create_experiment("sweep_figure")
    parent = client.create_run(experiment.experiment_id, run_name="sweep x")
    curves = {"optimizer=sgd": [0.30, 0.35, 0.41], "optimizer=adam": [0.30, 0.44, 0.47]}
    for name, values in curves.items():
        child = client.create_run(
            experiment.experiment_id, run_name=name, tags={"mlflow.parentRunId": parent.info.run_id}
        )
        for step, value in enumerate(values):
            client.log_metric(child.info.run_id, "eval/accuracy", value, step=step)
    client.create_run(experiment.experiment_id, run_name="not in the sweep")
    fig = plots.sweep_figure(parent.info.run_id)
    lines = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].get_lines()}
    assert lines == curves
    plots.log_sweep_figure(parent.info.run_id)
    assert plots.SWEEP_FIGURE in {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: dict | None = None):
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


@pytest.mark.e2e
def test_mlflow_server_shows_the_run(tiny_run_id, tmp_path):
    """`mlflow server` on loopback against the test store, queried over REST as the UI does; then shut down."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            os.environ["MLFLOW_TRACKING_URI"],
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=open(tmp_path / "server.log", "w"),  # noqa: SIM115 (the server outlives this expression; closed with it)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"{base}/health") == b"OK":
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        assert b"<html" in _get(f"{base}/").lower()  # the UI itself
        api = f"{base}/api/2.0/mlflow"
        experiment = json.loads(_get(f"{api}/experiments/get-by-name?experiment_name={TINY_RUN_EXPERIMENT}"))
        experiment_id = experiment["experiment"]["experiment_id"]
        (run,) = json.loads(_get(f"{api}/runs/search", {"experiment_ids": [experiment_id]}))["runs"]
        assert run["info"]["run_id"] == tiny_run_id and run["info"]["status"] == "FINISHED"
        assert {"eval/loss", "eval/accuracy", "eval/perplexity", "eval/bits_per_char", "train/clients"} <= {
            m["key"] for m in run["data"]["metrics"]
        }
        # max_results is needed: without it MLflow 3.5's server answers an empty first page (and a page token).
        history = json.loads(
            _get(f"{api}/metrics/get-history?run_id={tiny_run_id}&metric_key=eval/accuracy&max_results=1000")
        )
        assert sorted(m["step"] for m in history["metrics"]) == [0, 1, 2]
        listed = json.loads(_get(f"{api}/artifacts/list?run_id={tiny_run_id}&path=plots"))
        assert sorted(f["path"] for f in listed["files"]) == sorted([plots.RUN_FIGURE, plots.CLIENT_ACCURACY_FIGURE])
        png = _get(f"{base}/get-artifact?path={plots.RUN_FIGURE}&run_uuid={tiny_run_id}")
        assert png.startswith(b"\x89PNG")
        table = json.loads(_get(f"{base}/get-artifact?path={release.SAMPLES_TABLE}&run_uuid={tiny_run_id}"))
        assert table["columns"] == ["round", "prompt", "temperature", "text"]
        models = json.loads(_get(f"{api}/logged-models/search", {"experiment_ids": [experiment_id]}))["models"]
        assert [(m["info"]["name"], m["info"]["source_run_id"]) for m in models] == [("final_model", tiny_run_id)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    left = session_processes(server.pid, grace=30.0)  # uvicorn's worker exits just after its parent
    assert not left, f"server processes left: {[p.cmdline() for p in left]}"


def test_progress_line_of_a_final_evaluation_off_schedule_says_so(capsys):
    """rounds=1 eval_every=5: round 1 trains, then the loop evaluates it once more; that is no second round."""
    from fedlm.utils import run_sync

    progress = release.ProgressReleaseManager(total_rounds=1)
    for value, key in (
        ({"evaluation/loss": 1.9}, 0),
        ({"client_work/train/loss": 1.8}, 1),
        ({"evaluation/loss": 1.7}, 1),
    ):
        run_sync(progress.release(value, key))  # fedlm's: asyncio.run would leave the thread without a loop
    start, trained, final = capsys.readouterr().out.splitlines()
    assert start.startswith("round 0/1") and "eval_loss 1.9000" in start
    assert trained.startswith("round 1/1") and "s/round" in trained and "final" not in trained
    assert final == "round 1/1  eval_loss 1.7000  (final evaluation)"


@pytest.mark.e2e
def test_params_are_the_chosen_options_and_only_their_keys(tiny_run_id):
    """A plain FedAvg run logs which option each group chose, and no key of an option it did not choose."""
    params = mlflow.get_run(tiny_run_id).data.params
    assert {k: params[k] for k in ("aggregator", "algorithm", "optimizer", "sampling", "client_weighting", "eval")} == {
        "aggregator": "mean",
        "algorithm": "fedavg",
        "optimizer": "sgd",
        "sampling": "uniform",
        "client_weighting": "num_examples",
        "eval": "keras",
    }
    not_chosen = [k for k in params if k.startswith(("aggregator.", "algorithm.", "sampling.", "client_weighting."))]
    assert not not_chosen, not_chosen  # mean, fedavg, uniform, num_examples have no keys of their own
    assert not [k for k in params if k.endswith(("._target_", "._partial_"))]
    assert params["optimizer.learning_rate"] == "0.5" and params["rounds"] == "2"


def test_run_params_add_the_choices_and_drop_how_options_are_built_and_the_machine():
    flat = {
        "aggregator._target_": "fedlm.fl.aggregators.dp",
        "aggregator._partial_": True,
        "aggregator.noise_multiplier": 0.5,
        "rounds": 3,
        "cache_dir": "/home/x/.cache/fedlm",
        "runtime.max_concurrent_clients": 2,
        "pretrain.log_every": 100,
        "pretrain.steps": 500,
    }
    choices = {"aggregator": "dp", "hydra/launcher": "basic", "experiment": None}
    assert store.run_params(flat, choices) == {
        "aggregator": "dp",
        "aggregator.noise_multiplier": 0.5,
        "rounds": 3,
        "pretrain.steps": 500,
    }
    # The schema's `experiment: null` is not the chosen experiment file (params.experiment was 'None' in every run)
    chosen = store.run_params(flat | {"experiment": None}, choices | {"experiment": "tutorial"})
    assert chosen["experiment"] == "tutorial"
    assert "experiment" not in store.run_params(flat | {"experiment": None}, choices)  # none chosen: no param
    # FedSGD leaves the client optimizer and its schedule unused: neither is a param of the run
    fedsgd = flat | {"optimizer.learning_rate": 0.5, "schedule.warmup_rounds": 0, "server_optimizer.learning_rate": 1}
    fedsgd_choices = {"algorithm": "fedsgd", "optimizer": "sgd", "schedule": "constant", "server_optimizer": "sgd"}
    assert set(store.run_params(fedsgd, fedsgd_choices)) == {
        "algorithm",
        "server_optimizer",
        "server_optimizer.learning_rate",
        "aggregator.noise_multiplier",
        "rounds",
        "pretrain.steps",
    }
    assert store.machine_tags(flat) == {
        "fedlm.config.cache_dir": "/home/x/.cache/fedlm",
        "fedlm.config.runtime.max_concurrent_clients": "2",
        "fedlm.config.pretrain.log_every": "100",
    }


@pytest.mark.e2e
def test_what_mlflow_shows_is_what_the_run_did(tiny_run_id):
    """What MLflow's UI shows, read back over its API: the model's figures are the run's last ones (not the
    pretrained start's), metrics only what changes per round, params the experiment and not the machine, a name
    without infrastructure overrides, the data as dataset inputs, a description from start to end."""
    from fedlm.conf import schema

    client = mlflow.MlflowClient()
    run = client.get_run(tiny_run_id)
    rounds = compose_config(TINY).rounds
    evals = {k: _history(tiny_run_id, k) for k in run.data.metrics if k.startswith("eval/")}
    assert {"eval/loss", "eval/accuracy"} <= set(evals)

    (model,) = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    linked = {m.key: (m.step, m.value) for m in model.metrics if m.key.startswith("eval/")}
    assert linked == {k: (rounds, history[rounds]) for k, history in evals.items()}
    assert linked["eval/loss"][1] != evals["eval/loss"][0]  # the trained model's, not round 0's
    assert model.tags[tags.RUN_NAME] == run.info.run_name
    assert f"models:/{model.model_id}" in model.tags[tags.DESCRIPTION]  # how to load it

    for key in run.data.metrics:  # per round (MLflow's own system metrics are per sample): no constant logged once
        if not key.startswith("system/"):
            assert sorted(_history(tiny_run_id, key)) in ([0, 1, 2], [1, 2]), key
    assert any(key.startswith("system/") for key in run.data.metrics)

    params = run.data.params
    assert params["optimizer"] == "sgd" and params["optimizer.learning_rate"] == "0.5"
    assert not [k for k in params if schema.is_machine_key(k)], params
    assert run.data.tags["fedlm.config.cache_dir"] == os.environ["FEDLM_CACHE_DIR"]  # the machine's: a tag
    assert run.data.tags["fedlm.config.mlflow.experiment_name"] == TINY_RUN_EXPERIMENT

    assert run.info.run_name == "fedavg sgd→sgd 2c tiny"  # TINY's `mlflow.experiment_name=e2e` is not in it
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert {d.name for d in inputs.values()} == {"shakespeare-train", "shakespeare-eval"}
    assert set(inputs) == {"train", "eval"} and all(len(d.digest) == 8 for d in inputs.values())
    eval_profile = json.loads(inputs["eval"].profile)
    assert eval_profile["clients"] == 3 and str(eval_profile["sequences"]) == run.data.tags["fedlm.eval_sequences"]
    assert json.loads(inputs["train"].profile)["clients"] == int(run.data.tags["fedlm.data_clients"]) > 800

    description = run.data.tags[tags.DESCRIPTION]
    start, end = evals["eval/loss"][0], evals["eval/loss"][rounds]
    assert f"| `eval/loss` | {start:.4g} | {end:.4g} |" in description and "mlflow.experiment_name" not in description
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[tags.EXPERIMENT_KIND] == "custom_model_development" and experiment.tags[tags.DESCRIPTION]
