"""Opening a new sqlite store through MLflow: Hydra's logging survives the schema migration, no ./mlruns."""

from __future__ import annotations

import logging

import mlflow

from fedlm.tracking import store  # noqa: F401  (importing it installs fedlm's database store builders)


def test_new_store_keeps_logging_and_the_working_directory(tmp_path, monkeypatch):
    cwd, db = tmp_path / "cwd", tmp_path / "db"
    cwd.mkdir()
    db.mkdir()
    monkeypatch.chdir(cwd)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    root = logging.getLogger()  # as Hydra leaves it: INFO, its handlers
    monkeypatch.setattr(root, "handlers", [handler])
    monkeypatch.setattr(root, "level", logging.INFO)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db / 'mlflow.db'}")
    default_experiment = client.get_experiment("0")  # MLflow makes it as it opens a new store
    client.create_registered_model("m")  # the model registry's store migrates on open too

    assert root.handlers == [handler] and root.level == logging.INFO  # alembic's fileConfig would replace them
    assert [r.getMessage() for r in records if r.levelno < logging.WARNING] == []  # the migrations' INFO lines
    assert list(cwd.iterdir()) == []  # no ./mlruns
    assert default_experiment.artifact_location == (db / "mlartifacts" / "0").as_uri()
