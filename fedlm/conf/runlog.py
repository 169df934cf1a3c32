"""Hydra's job log (`<run dir>/<job name>.log`) holds what the console showed, not only Python logging records:
fedlm's lines are prints. Light imports only: Hydra imports this module for its callback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from hydra.experimental.callback import Callback

from fedlm.console import Tee


def _to_log_files(handlers: list[logging.FileHandler], name: str, level: int) -> Callable[[str], None]:
    """A console line -> a record in the job's log files only (Hydra's console handler showed it already)."""

    def sink(line: str) -> None:
        record = logging.LogRecord(name, level, __file__, 0, line, None, None)
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)

    return sink


class ConsoleToRunLog(Callback):
    """From the job's start (Hydra has configured its logging by then) to its end, sys.stdout and sys.stderr also
    go to the FileHandlers of the root logger, in their format: stdout lines as INFO, stderr lines as WARNING.

    Installed after Hydra's handlers were made, so its console handler writes to the real stdout, not through the
    tee (which would log each record twice); removed at the job's end for the same reason in a multirun's next job.
    A job ended by SystemExit (fedlm's config and run errors) skips `on_job_end`: the process is ending anyway."""

    def __init__(self) -> None:
        self._tees: tuple[Tee, Tee] | None = None

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
        if not handlers or self._tees is not None:
            return
        self._tees = (
            Tee(sys.stdout, _to_log_files(handlers, "stdout", logging.INFO)),
            Tee(sys.stderr, _to_log_files(handlers, "stderr", logging.WARNING)),
        )
        sys.stdout, sys.stderr = self._tees

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if self._tees is not None:
            out, err = self._tees
            out.close()  # stops teeing, for whoever kept a reference to it
            err.close()
            sys.stdout, sys.stderr = out.stream, err.stream
            self._tees = None
