"""The console shows fedlm's lines (and Hydra's), not its libraries' start-up noise, and the run log keeps them.

- `filter_first_import`: TensorFlow 2.14 logs three errors and a warning while its shared libraries load, on every
  machine: both of its libraries register XLA's CUDA plugins (tensorflow#62075), and TF-TRT looks for TensorRT.
  TF_CPP_MIN_LOG_LEVEL cannot drop just those: TF reads it once, at its first line, and the errors would need
  level 3, which hides every later C++ error too. So those lines alone are dropped, and only while TF loads.
- `Tee`: fedlm's lines are prints; Hydra's job log gets them through a tee of sys.stdout/sys.stderr
  (`fedlm.conf.runlog`).
Standard library only: `fedlm/__init__.py` imports this before anything else.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TextIO

TENSORFLOW_IMPORT_NOISE = re.compile(
    rb"Unable to register cu(DNN|FFT|BLAS) factory: Attempting to register factory for plugin cu\w+ when one has "
    rb"already been registered|TF-TRT Warning: Could not find TensorRT"
)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


@contextlib.contextmanager
def stderr_without(pattern: re.Pattern[bytes]) -> Iterator[None]:
    """File descriptor 2 (where C++ libraries log) through a pipe that drops the lines matching `pattern`."""
    sys.stderr.flush()
    console = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with open(read_end, "rb") as pipe:
            for line in pipe:
                if not pattern.search(line):
                    _write_all(console, line)

    thread = threading.Thread(target=pump, name="fedlm-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(console, 2)  # closes the pipe's last write end: the pump forwards what is left, then ends
        thread.join(timeout=10.0)  # a child started meanwhile would hold the pipe open: leave the pump to it
        if not thread.is_alive():
            os.close(console)


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, finder: _FilteredFirstImport, loader: importlib.abc.Loader):
        self._finder, self._loader = finder, loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self._finder)  # once: later imports find the module in sys.modules
        module.__loader__ = module.__spec__.loader = self._loader  # the package sees its own loader
        with stderr_without(self._finder.pattern):
            self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _FilteredFirstImport(importlib.abc.MetaPathFinder):
    def __init__(self, package: str, pattern: re.Pattern[bytes]):
        self.package, self.pattern = package, pattern

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.package:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(self, spec.loader)
        return spec


def filter_first_import(package: str, pattern: re.Pattern[bytes]) -> None:
    """The first import of top-level `package`, wherever it happens, runs with `stderr_without(pattern)`."""
    if package not in sys.modules and not any(
        isinstance(f, _FilteredFirstImport) and f.package == package for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _FilteredFirstImport(package, pattern))


class Tee:
    """A text stream writing to `stream` that also hands each complete line to `sink` until closed.

    Closing it never closes `stream`, which it does not own: a logging handler made while the tee was sys.stderr
    keeps it, and closes it when logging is reconfigured (absl's does, for any stream that is no longer
    sys.stderr) -- that must not close the real stderr, nor tee later lines to a finished job's log."""

    def __init__(self, stream: TextIO, sink: Callable[[str], None]):
        self.stream, self._sink = stream, sink
        self._partial = ""
        self._lock = threading.RLock()  # a signal handler that prints (fedlm.fl.runtime) runs on the writing thread

    def write(self, text: str) -> int:
        written = self.stream.write(text)
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            sink = self._sink
        if sink is not None:
            for line in lines:
                sink(line)
        return written

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()
        self._sink = None

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, ...
        return getattr(self.stream, name)
