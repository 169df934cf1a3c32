"""A tiny real run through `python -m fedlm.run`, checked in MLflow, and checked for leftover processes."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest

from tests.conftest import TINY, compose_config

ROOT = Path(__file__).resolve().parent.parent


def run_fedlm(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run fedlm in its own session, then assert nothing of that session is left running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedlm.run", *args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    out, _ = proc.communicate(timeout=600)  # would hang here if an orphaned worker kept stdout open
    left = [p for p in psutil.process_iter(["pid"]) if _sid(p) == proc.pid]
    assert not left, f"processes left behind: {[p.cmdline() for p in left]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def _sid(p: psutil.Process) -> int | None:
    try:
        return os.getsid(p.pid)
    except (ProcessLookupError, PermissionError):
        return None


def _metric_steps(client: mlflow.MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    result = run_fedlm([*TINY, "mlflow.experiment_name=e2e"], tmp)
    assert result.returncode == 0, result.stdout[-3000:]
    return result


def test_run_logs_rounds_params_and_artifacts(tiny_run):
    assert "round 2/2" in tiny_run.stdout and "ETA" in tiny_run.stdout
    client = mlflow.MlflowClient()
    (run,) = mlflow.search_runs(experiment_names=["e2e"], output_format="list")
    assert run.info.status == "FINISHED"
    for key in ("eval_loss", "eval_accuracy"):
        assert sorted(_metric_steps(client, run.info.run_id, key)) == [0, 1, 2]
    for key in ("train_loss", "train_accuracy"):
        assert sorted(_metric_steps(client, run.info.run_id, key)) == [1, 2]
    assert run.data.params["model.rnn_units"] == "16" and run.data.params["rounds"] == "2"
    assert run.data.metrics["data_clients"] > 800
    assert "model=tiny" in run.data.tags["fedlm.overrides"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model", "samples"} <= artifacts
    sample = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/samples/final.txt")
    assert sample.startswith("What of TensorFlow Federated, you ask? ") and len(sample) > 200


def test_step0_eval_equals_the_starting_model(tiny_run):
    """Round 0 is the pretrained model evaluated directly: the weights went into TFF's state intact."""
    import tensorflow as tf

    from fedlm import data, model, pretrain, training

    cfg = compose_config(TINY)
    text = data.build_federated_text(data.load_plays(), cfg.data.proxy_genres, cfg.data.test_fraction, cfg.seed)
    eval_data = training.build_eval_data(
        data.to_client_data(text.test), cfg.eval_clients, cfg.seed, cfg.seq_length, cfg.eval_batch_size
    )
    start = model.compile_for_eval(tf.keras.models.load_model(pretrain.cache_path(cfg), compile=False))
    direct = start.evaluate(eval_data, verbose=0, return_dict=True)
    (run,) = mlflow.search_runs(experiment_names=["e2e"], output_format="list")
    logged = _metric_steps(mlflow.MlflowClient(), run.info.run_id, "eval_loss")
    np.testing.assert_allclose(logged[0], direct["loss"], rtol=1e-5)
    assert logged[2] != logged[0]  # and training then moved it


def test_final_model_is_the_trained_one(tiny_run):
    import tensorflow as tf

    from fedlm import pretrain

    (run,) = mlflow.search_runs(experiment_names=["e2e"], output_format="list")
    path = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/model/final_model.h5")
    final = tf.keras.models.load_model(path, compile=False).get_weights()
    start = tf.keras.models.load_model(pretrain.cache_path(compose_config(TINY)), compile=False).get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(final, start))


def test_multirun_gives_parent_and_children(tmp_path):
    result = run_fedlm(["-m", *TINY, "rounds=1", "optimizer=sgd,adam", "mlflow.experiment_name=sweep"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    runs = mlflow.search_runs(experiment_names=["sweep"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.data.params["optimizer._target_"].rsplit(".", 1)[1] for c in children} == {"build_sgdm", "build_adam"}


def test_bad_value_fails_before_training(tmp_path):
    result = run_fedlm(["rounds=-1"], tmp_path)
    assert result.returncode == 2
    assert "rounds=-1" in result.stdout and "round 0" not in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_process(tmp_path, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedlm.run", *TINY, "rounds=500", f"mlflow.experiment_name=interrupt{sig}",
         f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    for line in proc.stdout:
        if re.match(r"round +1/", line):
            break
    os.kill(proc.pid, sig)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    left = [p for p in psutil.process_iter(["pid"]) if _sid(p) == proc.pid]
    assert not left, f"processes left behind: {[p.cmdline() for p in left]}"
    (run,) = mlflow.search_runs(experiment_names=[f"interrupt{sig}"], output_format="list")
    assert run.info.status in ("FAILED", "KILLED")
