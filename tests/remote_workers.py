"""TFF workers for the tests, started as a user starts them: `python -m fedlm.worker --port P` from a shell, in the
background, in a session of their own (found and stopped by that session, asserted gone)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests import conftest


def free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::", 0))
        return s.getsockname()[1]


class Worker:
    """One `python -m fedlm.worker`, started by `sh -c '… &'`: its parent is not the test process (whose in-process
    TFF cleanup stops every child it has), and, as any shell's background job, it starts with SIGINT ignored."""

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.address = f"127.0.0.1:{port}"
        self.session = 0

    def start(self, timeout: float = 60.0) -> float:
        """Start it and wait for its ready line; returns the seconds that took."""
        started = time.monotonic()
        command = f"exec >>'{self.log}' 2>&1; '{sys.executable}' -m fedlm.worker --port {self.port} &"
        shell = subprocess.Popen(["sh", "-c", command], start_new_session=True, cwd=conftest.ROOT)
        shell.wait()
        self.session = shell.pid  # the session (and process group) keeps the shell's id after it exited
        conftest._sessions.add(self.session)
        while f"listening on [::]:{self.port}" not in self.text():
            assert time.monotonic() - started < timeout, f"worker on port {self.port} not ready:\n{self.text()}"
            time.sleep(0.05)
        return time.monotonic() - started

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def processes(self) -> list:
        return conftest.session_processes(self.session) if self.session else []

    def kill(self) -> None:
        """As a crash does: SIGKILL to the worker's process tree, nothing left."""
        for p in self.processes():
            with contextlib.suppress(Exception):
                p.kill()
        conftest.assert_session_ended(self.session)

    def stop(self) -> None:
        """SIGTERM to the session's process group (the python command; it stops TFF's binary), then assert nothing of
        the session is left."""
        if self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.session, signal.SIGTERM)
        conftest.assert_session_ended(self.session)


@contextlib.contextmanager
def workers(count: int, directory: Path) -> Iterator[list[Worker]]:
    started = [Worker(free_port(), directory / f"worker-{i}.log") for i in range(count)]
    try:
        for worker in started:
            worker.start()
        yield started
    finally:
        for worker in started:
            worker.stop()
