"""Lifetime of TFF's execution context: its C++ `worker_binary` subprocess must not outlive us.

TFF 0.87 starts the worker lazily and only kills it from a `__del__`; at interpreter exit it is orphaned
and keeps our stdout open (pipes, CI and sweeps hang). We set the context explicitly and, on leaving it,
terminate every child process it started (found through our process tree, not by name across the machine).
"""
from __future__ import annotations

import atexit
import contextlib
import signal
from typing import Iterator

import psutil


def kill_children(timeout: float = 5.0) -> None:
    """Terminate (then kill) all descendants of this process."""
    children = psutil.Process().children(recursive=True)
    for p in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _raise_on_sigterm(signum, frame):  # turn SIGTERM into an exception so `finally` blocks run
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def tff_context(max_concurrent_computation_calls: int = -1) -> Iterator[None]:
    """Install TFF's local C++ execution context and clean its worker up on exit, error, Ctrl-C or SIGTERM."""
    import tensorflow_federated as tff

    tff.backends.native.set_sync_local_cpp_execution_context(
        max_concurrent_computation_calls=max_concurrent_computation_calls
    )
    atexit.register(kill_children)
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        kill_children()
