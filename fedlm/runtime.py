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
    for p in alive:  # e.g. multiprocessing's resource tracker ignores SIGTERM
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)  # reap them: no zombies left for init


class Interrupted(SystemExit):
    """Ctrl-C or SIGTERM arrived; raised at the next round boundary so the run ends cleanly."""


_pending: list[int] = []


def _on_signal(signum, frame):
    # TFF's C++ runtime and asyncio loop swallow a KeyboardInterrupt raised mid-round: record the signal and
    # stop at the next round boundary (`check_interrupted`). A second signal stops at once.
    if _pending:
        raise Interrupted(128 + signum)
    _pending.append(signum)
    print(f"fedlm: got signal {signum}, stopping after this round (again to stop now)", flush=True)


def check_interrupted() -> None:
    """Raise `Interrupted` if a stop was asked for."""
    if _pending:
        raise Interrupted(128 + _pending[0])


@contextlib.contextmanager
def tff_context(max_concurrent_computation_calls: int = -1) -> Iterator[None]:
    """Install TFF's local C++ execution context and clean its worker up on exit, error, Ctrl-C or SIGTERM."""
    import tensorflow_federated as tff

    tff.backends.native.set_sync_local_cpp_execution_context(
        max_concurrent_computation_calls=max_concurrent_computation_calls
    )
    atexit.register(kill_children)
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _pending.clear()
        kill_children()
