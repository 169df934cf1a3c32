"""A run's metrics on their way to the MLflow store, kept in the run directory until the store has them.

The store can be unavailable for a while: a sqlite file locked by another process past MLflow's own 20 s wait, its
disk full, a tracking server down. Each round's metrics are appended to `checkpoints/metrics.jsonl` before they
are logged (write-ahead), and marked there once the store took them. While the store fails, training goes on and
the store is tried again with backoff, for up to `mlflow.store_retry_seconds`; what it lacks is logged as soon as it
is back, at the end of the run, or by the run that resumes this one. One JSON object a line, appended:

    {"run_id": "5f0c…"}                                          first line: the MLflow run the entries belong to
    {"entry": 7, "step": 3, "time": 1733…, "metrics": {"train_loss": 1.84, …}}   a release of round 3 (fsync'd)
    {"logged": 7}                                                the store acknowledged entry 7

`time` is the release's wall clock in ms (the metrics' MLflow timestamp, also when replayed); non-finite values are
written as Python's json writes them (NaN, Infinity). A last line cut short by a crash is ignored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from fedlm.errors import RunFailed

FILE_NAME = "metrics.jsonl"
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Entry:
    number: int
    step: int
    time_ms: int
    metrics: dict[str, float]


class MetricsLedger:
    """The file: entries appended durably before they are logged, acknowledgements after; what is still pending."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.run_id: str | None = None
        self._entries: dict[int, Entry] = {}
        self._logged: set[int] = set()
        self._recorded: set[tuple[int, str]] = set()  # (step, metric) of every entry
        self._torn = False  # the file ends inside a line: the next append starts a new one
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        self._torn = bool(text) and not text.endswith("\n")
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # cut short by a crash
                continue
            if "run_id" in record:
                self.run_id = record["run_id"]
            elif "logged" in record:
                self._logged.add(int(record["logged"]))
            elif "entry" in record:
                self._add(Entry(int(record["entry"]), int(record["step"]), int(record["time"]), record["metrics"]))

    def _add(self, entry: Entry) -> None:
        self._entries[entry.number] = entry
        self._recorded |= {(entry.step, name) for name in entry.metrics}

    def start(self, run_id: str) -> None:
        """Begin the ledger of `run_id` (a ledger of another run, left by a run that never got going, is dropped)."""
        self.run_id, self._entries, self._logged, self._recorded, self._torn = run_id, {}, set(), set(), False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(json.dumps({"run_id": run_id}) + "\n")
            _sync(f)

    def append(self, step: int, metrics: Mapping[str, float]) -> Entry:
        entry = Entry(max(self._entries, default=0) + 1, step, int(time.time() * 1000), dict(metrics))
        record = {"entry": entry.number, "step": step, "time": entry.time_ms, "metrics": entry.metrics}
        self._write(json.dumps(record), sync=True)  # on disk before the store is asked: a crash cannot lose it
        self._add(entry)
        return entry

    def acknowledge(self, entry: Entry) -> None:
        # Not synced: a lost acknowledgement only makes a resumed run check the store for that entry's steps.
        self._write(json.dumps({"logged": entry.number}), sync=False)
        self._logged.add(entry.number)

    def _write(self, line: str, sync: bool) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(("\n" if self._torn else "") + line + "\n")
            if sync:
                _sync(f)
        self._torn = False

    def pending(self) -> list[Entry]:
        """Entries the store has not acknowledged, oldest first."""
        return [e for n, e in sorted(self._entries.items()) if n not in self._logged]

    def has(self, step: int, name: str) -> bool:
        """Whether a metric of `step` was recorded here already (logged or pending): it must not be sent twice."""
        return (step, name) in self._recorded


def _sync(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


def unavailable_reason(error: BaseException) -> str | None:
    """Why the store could not take a write, if that may pass (locked, disk full, server unreachable): one short
    line. None for errors a retry cannot mend (a bad value, a deleted run), which are raised as they are."""
    if isinstance(error, MlflowException):
        if error.error_code == "TEMPORARILY_UNAVAILABLE":  # sqlite's OperationalError, a server's 503
            orig = getattr(error.__cause__, "orig", None)  # sqlite3's own message, without SQLAlchemy's SQL dump
            return _one_line(orig if orig is not None else error.message)
        if isinstance(error.__cause__ or error.__context__, OSError):  # the REST client could not connect
            return _one_line(error.message)
        return None
    if isinstance(error, OSError):  # the artifact store beside a sqlite file: ENOSPC, EIO
        return _one_line(error.strerror or error)
    return None


def _one_line(what: Any) -> str:
    text = " ".join(str(what).split())
    return text if len(text) <= 160 else text[:157] + "..."


def step_spans(steps: Iterable[int]) -> str:
    """[2, 3, 4, 7] -> '2-4, 7'."""
    spans: list[list[int]] = []
    for s in sorted(set(steps)):
        if spans and s == spans[-1][1] + 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


class _QuietStoreErrors(logging.Filter):
    """MLflow logs each failed sqlite write as a 50-line SQLAlchemy traceback before raising it; fedlm says in one
    line what happened and what it keeps, so those records go."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


def quiet_store_errors() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _QuietStoreErrors) for f in logger.filters):
        logger.addFilter(_QuietStoreErrors())


class StoreUnavailable(RunFailed):
    """The store stayed unavailable past `mlflow.store_retry_seconds`; the message names it and the ledger file."""


class StoreWriter:
    """Writes to the MLflow store that ride out its being unavailable for up to `patience` seconds.

    Round metrics (`log`) are written ahead to the ledger and sent without holding training up: while the store
    fails, each later release tries again once the backoff (1, 2, 4, … 30 s) has passed. Writes that cannot wait for
    later (`call`: text samples, the final model; `flush`, `finish`) retry in place. When the store has failed for
    `patience` seconds, the next failure raises `StoreUnavailable`. One console line when an outage begins, one when
    it ends.
    """

    def __init__(
        self,
        ledger_path: str | os.PathLike,
        uri: str,
        patience: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.ledger = MetricsLedger(ledger_path)
        self.uri, self.patience = uri, float(patience)
        self.run_id: str | None = None
        self._clock, self._sleep = clock, sleep
        self._down_since: float | None = None  # the first failure of the current outage
        self._next_try = 0.0
        self._delay = 1.0
        self.reason: str | None = None  # the last failure's, for the status line of a run ending early
        self._unsent: dict[int, dict[str, float]] = {}  # pending entries of which the store has part already
        quiet_store_errors()

    # --- the run's metrics ------------------------------------------------------------------------------------

    def attach(self, run_id: str, already_logged: Mapping[str, Collection[int]]) -> None:
        """Write to `run_id`. A resumed run's ledger may hold entries the store never took: they are logged first,
        each metric step only if the store lacks it (its acknowledgement may be what was lost)."""
        self.run_id = run_id
        if self.ledger.run_id != run_id:
            self.ledger.start(run_id)
            return
        for entry in self.ledger.pending():
            missing = {k: v for k, v in entry.metrics.items() if entry.step not in already_logged.get(k, ())}
            if missing:
                self._unsent[entry.number] = missing
            else:
                self.ledger.acknowledge(entry)
        if note := self.pending_note():
            self.flush()
            print(f"fedlm: logged {note}, which the store lacked", flush=True)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Keep a release's metrics in the ledger, then send what the store lacks, if it is not being waited out."""
        new = {k: v for k, v in metrics.items() if not self.ledger.has(step, k)}  # recomputed after a resume
        if not new:
            return
        try:
            self.ledger.append(step, new)
        except OSError as e:  # the run directory's disk: the checkpoint would fail next anyway
            raise RunFailed(
                f"cannot keep round {step}'s metrics in {self.ledger.path} ({e.strerror or e}) before "
                f"logging them to the MLflow store {self.uri}"
            ) from e
        if self._down_since is None or self._clock() >= self._next_try:
            self._send_pending()

    def flush(self, what: str | None = None) -> None:
        """Wait (up to the patience) until the store has every entry of the ledger (`what` waits on it)."""
        while True:
            self._wait()
            if self._send_pending(what=what):
                return

    def _send_pending(self, give_up: bool = True, what: str | None = None) -> bool:
        client = mlflow.MlflowClient(tracking_uri=self.uri)
        for entry in self.ledger.pending():
            metrics = self._unsent.get(entry.number, entry.metrics)
            batch = [Metric(k, float(v), entry.time_ms, entry.step) for k, v in metrics.items()]
            if not self._attempt(lambda batch=batch: client.log_batch(self.run_id, metrics=batch), give_up, what):
                return False
            self.ledger.acknowledge(entry)
            self._unsent.pop(entry.number, None)
        return True

    # --- other writes -----------------------------------------------------------------------------------------

    def call(self, write: Callable[[], T], what: str) -> T:
        """`write` (text samples, the final model), retried while the store is unavailable. The ledger goes first:
        its writes can be repeated safely, so a store that still fails is found before `write` half-writes."""
        self.flush(what)
        result: list[T] = []
        self._retry(lambda: result.append(write()), what)
        return result[0]

    def finish(self, status: str, wait: bool) -> bool:
        """End the run with `status`; whether the store took it. `wait`: the ledger first, retried up to the patience
        (then StoreUnavailable). Otherwise one try of each, no more (the run is stopping): the ledger unless the store
        is known to be down past its patience, then the status, which also ends MLflow's active run either way."""

        def terminate() -> None:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self.run_id:
                mlflow.end_run(status)  # pops the active run before asking the store: nothing is ended twice
            else:
                mlflow.MlflowClient(tracking_uri=self.uri).set_terminated(self.run_id, status)

        if wait:
            what = f"the run's status {status}"
            self.flush(what)
            self._retry(terminate, what)
            return True
        if not self._exhausted():
            self._send_pending(give_up=False)
        return self._attempt(terminate, give_up=False)

    # --- retries ----------------------------------------------------------------------------------------------

    def _attempt(self, write: Callable[[], Any], give_up: bool, what: str | None = None) -> bool:
        """One try of `write`: True if the store took it; False if it is unavailable (to be tried again later)."""
        started = self._clock()  # a locked sqlite store fails only after MLflow's 20 s wait: the outage began here
        try:
            write()
        except Exception as e:
            reason = unavailable_reason(e)
            if reason is None:
                raise
            self._failed(reason, give_up, what, started)
            return False
        if self._down_since is not None:
            print(
                f"fedlm: MLflow store {self.uri} available again after {self._clock() - self._down_since:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        self._down_since, self._delay = None, 1.0
        return True

    def _failed(self, reason: str, give_up: bool, what: str | None, started: float) -> None:
        now = self._clock()
        self.reason = reason
        if self._down_since is None:
            self._down_since = started
            print(
                f"fedlm: MLflow store {self.uri} unavailable ({reason}); retrying for up to {self.patience:.0f} s, "
                f"round metrics kept in {self.ledger.path} until it has them",
                file=sys.stderr,
                flush=True,
            )
        if give_up and self._exhausted():
            raise StoreUnavailable(self._gave_up(what))
        # The last try falls on the deadline itself: the patience is neither cut short nor overrun by a backoff.
        self._next_try = min(now + self._delay, self._down_since + self.patience)
        self._delay = min(2 * self._delay, 30.0)

    def _exhausted(self) -> bool:
        return self._down_since is not None and self._clock() - self._down_since >= self.patience

    def _retry(self, write: Callable[[], Any], what: str) -> None:
        while True:
            self._wait()
            if self._attempt(write, give_up=True, what=what):
                return

    def _wait(self) -> None:
        """Until the next try is due, if the store is down."""
        if self._down_since is not None:
            self._sleep(max(0.0, self._next_try - self._clock()))

    def _gave_up(self, what: str | None) -> str:
        pending = self.ledger.pending()
        kept = (
            f"the metrics of rounds {step_spans(e.step for e in pending)} it lacks are kept in {self.ledger.path}"
            if pending
            else f"it has every round's metrics (kept in {self.ledger.path} too)"
        )
        could_not = f"; {what} could not be logged" if what else ""
        return (
            f"MLflow store {self.uri} unavailable for {self._clock() - self._down_since:.0f} s "
            f"({self.reason}){could_not}; {kept}"
        )

    def pending_note(self) -> str:
        """'the metrics of rounds 2-4 kept in <file>' or '' : what a resumed run logs first."""
        pending = self.ledger.pending()
        if not pending:
            return ""
        return f"the metrics of rounds {step_spans(e.step for e in pending)} kept in {self.ledger.path}"
