"""`python -m fedlm.server`, a team's tracking server (PostgreSQL, served artifacts), under parallel jobs."""

from __future__ import annotations

import mlflow
import pytest

from tests.commands.test_sweeps import SWEEP, assert_full_history, sweep_runs
from tests.conftest import TINY, run_fedlm


@pytest.fixture
def on_team_server(team_server):
    """This test process reads the team server (the session's other tests keep their sqlite store)."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(team_server.uri)
    yield team_server
    mlflow.set_tracking_uri(previous)


@pytest.mark.e2e
def test_a_four_job_joblib_sweep_on_the_team_server_loses_nothing(tmp_path, on_team_server):
    """Four jobs at once writing to one server: the parent and the four children FINISHED, every round's metrics,
    every run's artifacts in the server's artifact store (uploaded through it: the jobs have no path to it)."""
    print(on_team_server.ready_line)  # the start-up figures, with -s
    experiment = "team_server"
    args = ["-m", *TINY, "rounds=1", *SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=4"]
    args += [f"mlflow.tracking_uri={on_team_server.uri}", f"mlflow.experiment_name={experiment}"]
    result = run_fedlm(args, tmp_path, env={"MLFLOW_TRACKING_URI": "sqlite:////nonexistent/not-used.db"})
    assert result.returncode == 0, result.stdout[-3000:]

    parent, children = sweep_runs(experiment)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert_full_history(children, rounds=1)
    client = mlflow.MlflowClient()
    assert "plots/sweep_eval_accuracy.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    for child in children:
        assert child.info.artifact_uri.startswith("mlflow-artifacts:"), child.info.artifact_uri
        logged = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "model", "samples", "plots", "sampled_clients.json"} <= logged, logged
        assert "model/final_model.h5" in {a.path for a in client.list_artifacts(child.info.run_id, "model")}
        config = mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/config.yaml")  # read back through the server
        assert f"tracking_uri: {on_team_server.uri}" in config
    stored = list((on_team_server.directory / "artifacts").rglob("final_model.h5"))
    assert len(stored) == 4, stored  # where the server keeps them


def test_postgresql_is_a_direct_store_too(team_server, tmp_path):
    """`mlflow.tracking_uri=postgresql://…`: checked and opened as fedlm opens every store (its artifacts then go
    where the experiment's artifact location says)."""
    from fedlm.tracking import store

    previous = mlflow.get_tracking_uri()
    try:
        assert store.connect(team_server.database_uri, "direct") == team_server.database_uri
        experiment = mlflow.create_experiment("direct", artifact_location=(tmp_path / "artifacts").as_uri())
        client = mlflow.MlflowClient()
        run = client.create_run(experiment)
        for step in range(3):
            client.log_metric(run.info.run_id, "eval/loss", 1.0 / (step + 1), step=step)
        client.set_terminated(run.info.run_id)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/loss")] == [0, 1, 2]
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri(previous)
