"""The run-log tee across a multirun's jobs in one process: each job's log gets its lines once, the console all."""

from __future__ import annotations

import io
import logging
import sys

from fedlm.conf.runlog import ConsoleToRunLog


def test_each_job_log_gets_its_own_lines_once_and_the_console_stays_open(tmp_path, monkeypatch):
    console = io.StringIO()
    monkeypatch.setattr(sys, "stdout", console)
    monkeypatch.setattr(sys, "stderr", console)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.INFO)
    callback = ConsoleToRunLog()
    for job in ("0", "1"):
        # As Hydra configures each job's logging before the job starts: its console handler, its log file.
        file = logging.FileHandler(tmp_path / f"{job}.log")
        file.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        root.handlers[:] = [logging.StreamHandler(sys.stdout), file]
        callback.on_job_start(config=None)
        print(f"job {job}")
        print(f"job {job} error", file=sys.stderr)
        logging.getLogger("hydra.test").info(f"record {job}")
        kept = sys.stderr  # a handler made during the job keeps the stream of its time (absl's does) ...
        callback.on_job_end(config=None, job_return=None)
        kept.close()  # ... and closes it when the next job's logging is configured
        file.close()
    for job in ("0", "1"):
        logged = (tmp_path / f"{job}.log").read_text()
        assert logged == f"[stdout] job {job}\n[stderr] job {job} error\n[hydra.test] record {job}\n"
    assert console.getvalue() == "job 0\njob 0 error\nrecord 0\njob 1\njob 1 error\nrecord 1\n"
    assert sys.stdout is console and sys.stderr is console and not console.closed
