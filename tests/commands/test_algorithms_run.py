"""End to end: algorithm=mime_lite on a Dirichlet partition with unreliable clients, and algorithm=fedsgd."""

from __future__ import annotations

import mlflow
import pytest

from tests.commands.test_run import _metric_steps
from tests.conftest import TINY, run_fedlm


@pytest.mark.e2e
def test_mime_lite_with_unreliable_clients_logs_who_reported_each_round(tmp_path):
    participation = ["participation.dropout=0.2", "participation.over_select=1", "participation.straggler_fraction=0.5"]
    args = [*TINY, "partition=dirichlet", "partition.alpha=0.1", "algorithm=mime_lite", "optimizer=sgdm"]
    result = run_fedlm(
        [*args, *participation, "participation.straggler_work=0.5", "mlflow.experiment_name=mime"], tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "round 2/2" in result.stdout and "dropped" in result.stdout
    (run,) = mlflow.search_runs(experiment_names=["mime"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.params["algorithm"] == "mime_lite"
    assert run.data.params["participation.dropout"] == "0.2"
    client = mlflow.MlflowClient()
    count = {
        k: _metric_steps(client, run.info.run_id, f"train/clients_{k}")
        for k in ("sampled", "dropped", "reporting", "straggled")
    }
    trained = _metric_steps(client, run.info.run_id, "train/clients")
    sampled = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/sampled_clients.json")
    for step in (1, 2):
        assert count["sampled"][step] == 3  # clients_per_round 2 + over_select 1
        assert count["reporting"][step] == min(2, 3 - count["dropped"][step]) == len(sampled[str(step)])
        if count["reporting"][step]:
            assert trained[step] == count["reporting"][step]  # TFF trained exactly the reporting clients
            assert count["straggled"][step] == 1  # half of 1 or 2 reporting clients, to the nearest client


@pytest.mark.e2e
def test_fedsgd_trains_and_logs_fedlms_metrics(tmp_path):
    result = run_fedlm([*TINY, "algorithm=fedsgd", "mlflow.experiment_name=fedsgd"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    (run,) = mlflow.search_runs(experiment_names=["fedsgd"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.params["algorithm"] == "fedsgd"
    client = mlflow.MlflowClient()
    for key in ("train/loss", "train/accuracy", "train/clients", "train/batches"):
        assert sorted(_metric_steps(client, run.info.run_id, key)) == [1, 2], key
    eval_loss = _metric_steps(client, run.info.run_id, "eval/loss")
    assert sorted(eval_loss) == [0, 1, 2] and eval_loss[2] != eval_loss[0]
    assert not any(k.startswith("train/clients_") for k in run.data.metrics)  # reliable: no participation counts
