"""The metrics ledger and the store writer: metrics kept in the run directory until the store has them, retried with
backoff while it is unavailable, each step logged once, and the store's state reported as it is."""

from __future__ import annotations

import errno
import json
import math

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE

from fedlm.tracking import ledger


class FakeClock:
    """Time that passes only when the writer sleeps (or the test says so): backoff without waiting for it."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def sqlite_error(text: str) -> MlflowException:
    """What MLflow raises for a failed sqlite write: SQLAlchemy's OperationalError (wrapping sqlite3's) as cause."""
    import sqlite3

    import sqlalchemy.exc

    wrapped = sqlalchemy.exc.OperationalError("INSERT INTO metrics ...", {"key": "a"}, sqlite3.OperationalError(text))
    error = MlflowException(str(wrapped), error_code=TEMPORARILY_UNAVAILABLE)
    error.__cause__ = wrapped
    return error


LOCKED = sqlite_error("database is locked")


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"  # one store: creating one takes seconds


@pytest.fixture
def store(store_uri, request):
    """The store and a run of this test's own in it."""
    client = mlflow.MlflowClient(tracking_uri=store_uri)
    run_id = client.create_run(client.create_experiment(request.node.name)).info.run_id
    return store_uri, client, run_id


@pytest.fixture
def failing(monkeypatch):
    """`failing.left = n`: the next n writes (metrics, status) fail as a locked store's do; `failing.calls` counts
    the writes tried."""
    state = type("Failing", (), {"left": 0, "calls": 0, "error": LOCKED})()

    def failing_write(real):
        def write(self, *args, **kwargs):
            state.calls += 1
            if state.left:
                state.left -= 1
                raise state.error
            return real(self, *args, **kwargs)

        return write

    for name in ("log_batch", "set_terminated"):
        monkeypatch.setattr(mlflow.MlflowClient, name, failing_write(getattr(mlflow.MlflowClient, name)))
    return state


def steps(client: mlflow.MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_entries_wait_in_the_file_until_acknowledged_across_reopening_and_a_torn_line(tmp_path):
    path = tmp_path / "checkpoints" / ledger.FILE_NAME
    book = ledger.MetricsLedger(path)
    book.start("run1")
    first = book.append(1, {"train_loss": 1.5})
    book.append(2, {"train_loss": math.inf, "eval_loss": math.nan})  # a diverged round is kept as it was
    book.acknowledge(first)
    with open(path, "a") as f:
        f.write('{"entry": 3, "step": 3, "ti')  # killed in the middle of a line

    reopened = ledger.MetricsLedger(path)
    assert reopened.run_id == "run1"
    (second,) = reopened.pending()
    assert second.step == 2 and second.metrics["train_loss"] == math.inf and math.isnan(second.metrics["eval_loss"])
    assert reopened.has(1, "train_loss") and not reopened.has(3, "train_loss")
    reopened.append(3, {"train_loss": 1.2})  # on a line of its own, not glued to the torn one
    assert [e.step for e in ledger.MetricsLedger(path).pending()] == [2, 3]
    assert json.loads(path.read_text().splitlines()[0]) == {"run_id": "run1"}


def test_metrics_wait_in_the_ledger_while_the_store_fails_then_each_step_is_logged_once(
    tmp_path, store, failing, capsys
):
    uri, client, run_id = store
    clock = FakeClock()
    writer = ledger.StoreWriter(tmp_path / ledger.FILE_NAME, uri, patience=60, clock=clock, sleep=clock.sleep)
    writer.attach(run_id, {})
    failing.left = 1
    writer.log(1, {"train_loss": 1.5})
    assert steps(client, run_id, "train_loss") == [] and [e.step for e in writer.ledger.pending()] == [1]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fedlm: MLflow store {uri} unavailable (") and str(writer.ledger.path) in line

    writer.log(2, {"train_loss": 1.4})  # within the backoff: kept, the store not asked (training goes on)
    assert failing.calls == 1
    clock.now += 1.0
    writer.log(3, {"train_loss": 1.3})
    assert steps(client, run_id, "train_loss") == [1, 2, 3] and writer.ledger.pending() == []
    assert "available again" in capsys.readouterr().err
    writer.log(3, {"train_loss": 1.3})  # a round recomputed after a resume: its step is not logged again
    assert steps(client, run_id, "train_loss") == [1, 2, 3]


def test_a_store_unavailable_past_the_patience_stops_the_run_naming_store_file_and_rounds(tmp_path, store, failing):
    uri, client, run_id = store
    clock = FakeClock()
    writer = ledger.StoreWriter(tmp_path / ledger.FILE_NAME, uri, patience=20, clock=clock, sleep=clock.sleep)
    writer.attach(run_id, {})
    failing.left = 10**6
    writer.log(1, {"eval_loss": 2.0})
    writer.log(2, {"eval_loss": 1.9})
    with pytest.raises(ledger.StoreUnavailable) as stopped:
        writer.flush()
    assert str(stopped.value) == (
        f"MLflow store {uri} unavailable for 20 s (database is locked); the metrics of "
        f"rounds 1-2 it lacks are kept in {writer.ledger.path}"
    )
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 5.0]  # backoff, the last try on the deadline
    assert [e.step for e in ledger.MetricsLedger(writer.ledger.path).pending()] == [1, 2]
    assert not writer.finish("FAILED", wait=False)  # one try, the store still failing: not marked
    assert client.get_run(run_id).info.status == "RUNNING"


def test_a_resumed_run_logs_what_its_store_lacks_and_nothing_twice(tmp_path, store):
    uri, client, run_id = store
    path = tmp_path / ledger.FILE_NAME
    book = ledger.MetricsLedger(path)
    book.start(run_id)
    book.append(1, {"train_loss": 1.5})  # logged, but the run was killed before its acknowledgement
    client.log_metric(run_id, "train_loss", 1.5, step=1)
    book.append(2, {"train_loss": 1.4})  # never logged

    writer = ledger.StoreWriter(path, uri, patience=0)
    writer.attach(run_id, {"train_loss": {1}})
    assert steps(client, run_id, "train_loss") == [1, 2] and writer.ledger.pending() == []
    writer.log(2, {"train_loss": 1.4})  # round 2 recomputed from an earlier checkpoint
    assert steps(client, run_id, "train_loss") == [1, 2]


def test_a_new_run_does_not_inherit_another_runs_ledger(tmp_path, store):
    uri, client, run_id = store
    book = ledger.MetricsLedger(tmp_path / ledger.FILE_NAME)
    book.start("a-run-that-never-got-going")
    book.append(1, {"train_loss": 9.9})
    writer = ledger.StoreWriter(book.path, uri, patience=0)
    writer.attach(run_id, {})
    assert writer.ledger.pending() == [] and steps(client, run_id, "train_loss") == []


def test_errors_a_retry_cannot_mend_are_raised_at_once(tmp_path, store, failing):
    uri, _, run_id = store
    writer = ledger.StoreWriter(tmp_path / ledger.FILE_NAME, uri, patience=60)
    writer.attach(run_id, {})
    failing.left, failing.error = 1, MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)
    with pytest.raises(MlflowException, match="bad value"):
        writer.log(1, {"train_loss": 1.0})


def test_finish_marks_the_run_once_the_store_has_its_metrics(tmp_path, store, failing):
    uri, client, run_id = store
    clock = FakeClock()
    writer = ledger.StoreWriter(tmp_path / ledger.FILE_NAME, uri, patience=60, clock=clock, sleep=clock.sleep)
    writer.attach(run_id, {})
    failing.left = 3
    writer.log(1, {"train_loss": 1.0})
    assert writer.finish("FINISHED", wait=True)
    assert steps(client, run_id, "train_loss") == [1] and client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    "error, reason",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
        (LOCKED, "database is locked"),  # sqlite's words, not SQLAlchemy's SQL dump
        (MlflowException("Service Unavailable", error_code=TEMPORARILY_UNAVAILABLE), "Service Unavailable"),  # a 503
        (MlflowException("Run 'x' not found", error_code=RESOURCE_DOES_NOT_EXIST), None),
        (ValueError("a bug"), None),
    ],
)
def test_what_counts_as_the_store_being_unavailable(error, reason):
    assert ledger.unavailable_reason(error) == reason


def test_connection_errors_of_a_tracking_server_are_unavailability():
    import requests

    try:
        try:
            raise requests.exceptions.ConnectionError("Connection refused")
        except Exception as e:
            raise MlflowException(f"API request to http://127.0.0.1:1/api failed with exception {e}")  # noqa: B904 (MLflow's way)
    except MlflowException as outer:
        assert ledger.unavailable_reason(outer).startswith("API request to http://127.0.0.1:1/api failed")


def test_step_spans():
    assert ledger.step_spans([7, 2, 3, 4, 4]) == "2-4, 7"
