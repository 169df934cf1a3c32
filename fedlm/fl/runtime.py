"""Lifetime of TFF's execution context: its C++ `worker_binary` subprocess must not outlive us.

TFF 0.87 starts the worker lazily and only kills it from a `__del__`; at interpreter exit it is orphaned
and keeps our stdout open (pipes, CI and sweeps hang). We set the context explicitly and, on leaving it,
terminate every child process it started (found through our process tree, not by name across the machine).
When fedlm dies without running any Python (SIGKILL, OOM killer), the kernel stops the worker for us: see
`install_parent_death_signal`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import gc
import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psutil

from fedlm import console
from fedlm.conf import workers as worker_addresses
from fedlm.errors import RunFailed

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def kill_children(timeout: float = 5.0, keep_resource_tracker: bool = False) -> None:
    """Terminate (then kill) all descendants of this process; but joblib's resource tracker if asked to keep it
    (it exits on its own once its parent has; killed first, joblib's exit relaunches it, and the new one prints a
    KeyError traceback for every resource the old one knew)."""
    children = [
        p for p in psutil.Process().children(recursive=True) if not (keep_resource_tracker and _is_resource_tracker(p))
    ]
    for p in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    gone, alive = psutil.wait_procs(children, timeout=timeout)
    for p in alive:  # e.g. multiprocessing's resource tracker ignores SIGTERM
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    gone += psutil.wait_procs(alive, timeout=timeout)[0]  # reap them: no zombies left for init
    # A TFF context still referenced (a round given up mid-computation) signals its worker from `__del__` later:
    # its `Popen` must know the worker is gone (see `_signal_worker`).
    reaped = {p.pid: p.returncode for p in gone}
    for worker in list(_workers):
        if worker.returncode is None and worker.pid in reaped:
            worker.returncode = reaped[worker.pid] if reaped[worker.pid] is not None else -signal.SIGKILL


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A `preexec_fn`: the child gets SIGKILL when its parent dies (Linux PR_SET_PDEATHSIG), and SIGINT reaches it
    (`_signals_cleared`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl  # resolved here, in the parent: the child only calls it
    clear_signals = _signals_cleared(libc)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died between fork and prctl: nobody would signal us
            os.kill(os.getpid(), signal.SIGKILL)
        clear_signals()

    return preexec


def _signals_cleared(libc: ctypes.CDLL) -> Callable[[], None]:
    """For the worker's `preexec_fn`: no signal blocked, SIGINT at its default. TFF stops its worker with SIGINT and
    then waits without a timeout; a blocked SIGINT (Ray's job workers block it; the mask is inherited through fork
    and exec) or an ignored one (kept across exec) would make every run hang at its end."""
    set_handler = libc.signal  # libc's: Python's `signal.signal` works only in the main thread, and TFF forks from
    set_handler.restype = ctypes.c_void_p  # its event-loop thread
    set_handler.argtypes = [ctypes.c_int, ctypes.c_void_p]

    def clear() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        set_handler(signal.SIGINT, 0)  # SIG_DFL

    return clear


class _WorkerPopen(subprocess.Popen):
    """`subprocess.Popen` for TFF's worker: dies with fedlm, is out of reach of the terminal's Ctrl-C, and runs off
    the network (`fedlm.fl.isolated_worker`: its own network namespace, reached through a unix-domain socket)."""

    def __init__(self, args, *more, **kwargs):
        port = next((int(str(a).split("=", 1)[1]) for a in args if str(a).startswith("--port=")), None)
        if port is not None and _private_local_worker:
            path = os.path.join(_socket_dir(), f"worker-{port}.sock")
            _unix_sockets[port] = path
            args = [sys.executable, "-m", "fedlm.fl.isolated_worker", path, *args]
        kwargs.setdefault("preexec_fn", _die_with_parent(os.getpid()))
        # Its own process group: a terminal's Ctrl-C goes to the foreground group, and would kill the worker
        # mid-round before fedlm can finish the round and save. TFF stops it with an explicit SIGINT to its pid.
        kwargs.setdefault("process_group", 0)
        super().__init__(args, *more, **kwargs)
        _workers.add(self)


_unix_sockets: dict[int, str] = {}  # the local workers' ports -> the unix sockets that reach them
_private_local_worker = True  # `tff_context(private_local_worker=)`


def _socket_dir() -> str:
    """A directory of this process's own (0700) for its workers' sockets, removed at exit."""
    global _socket_directory
    if _socket_directory is None:
        _socket_directory = tempfile.mkdtemp(prefix="fedlm-workers-")
        atexit.register(shutil.rmtree, _socket_directory, ignore_errors=True)
    return _socket_directory


_socket_directory: str | None = None


def _insecure_channel(target: str, *args, **kwargs):
    """`grpc.insecure_channel` as TFF's local context sees it: `localhost:PORT` of a worker we started is its unix
    socket."""
    import grpc

    host, _, port = target.rpartition(":")
    if host == "localhost" and port.isdigit() and int(port) in _unix_sockets:
        target = f"unix:{_unix_sockets[int(port)]}"
    return grpc.insecure_channel(target, *args, **kwargs)


_workers: weakref.WeakSet[_WorkerPopen] = weakref.WeakSet()


def _signal_worker(pid: int, sig: int) -> None:
    """`os.kill` as TFF's worker manager sees it: a worker that `kill_children` already stopped and reaped is not
    signalled again (TFF's `__del__` would fail with ProcessLookupError, or hit whatever process has the pid now)."""
    if any(worker.pid == pid and worker.returncode is not None for worker in list(_workers)):
        return
    os.kill(pid, sig)


def install_parent_death_signal() -> None:
    """Make the `worker_binary` that TFF starts die with this process, however this process ends.

    Why this way: exit handlers, `finally` and signal handlers cover normal exit, exceptions, Ctrl-C and SIGTERM,
    but nothing of ours runs on SIGKILL. Only the kernel can then stop the worker, if asked at its start:
    PR_SET_PDEATHSIG, set between fork and exec. TFF starts the worker with `subprocess.Popen` inside a private
    closure (`executor_factory.local_cpp_executor_factory.start_process`), so we replace the `subprocess` module
    *that one TFF module sees* by a namespace whose `Popen` adds the `preexec_fn` (everything else unchanged);
    no TFF code is copied, nothing else in the process is affected. The alternatives cost more: starting and
    wiring the worker ourselves re-implements TFF's private executor factory, and a watchdog process is one
    more process to leak. PR_SET_PDEATHSIG fires when the *thread* that forked exits: TFF forks from its
    execution context's event-loop thread, which runs until the interpreter exits. The `preexec_fn` only calls
    a libc function resolved beforehand, which is safe in a multi-threaded parent.
    """
    from tensorflow_federated.python.core.impl.executor_stacks import executor_factory

    if getattr(executor_factory.subprocess, "Popen", None) is not _WorkerPopen:
        executor_factory.subprocess = types.SimpleNamespace(**{**vars(subprocess), "Popen": _WorkerPopen})
    # The same way, its `os.kill` skips a worker already stopped (see `_signal_worker`).
    if getattr(executor_factory.os, "kill", None) is not _signal_worker:
        executor_factory.os = types.SimpleNamespace(**{**vars(os), "kill": _signal_worker})
    # And its channel to the worker goes through the worker's unix socket (see `_WorkerPopen`).
    if getattr(executor_factory.grpc, "insecure_channel", None) is not _insecure_channel:
        executor_factory.grpc = types.SimpleNamespace(
            **{**vars(executor_factory.grpc), "insecure_channel": _insecure_channel}
        )


class Stopwatch:
    """Named laps since the process started (so interpreter start, Hydra and imports count too) -- or, for the
    later jobs of a multirun in the same process, since the job started."""

    _process_start_counted = False

    def __init__(self) -> None:
        now = time.time()
        if Stopwatch._process_start_counted:
            self._start, self.laps = now, {}
        else:
            Stopwatch._process_start_counted = True
            self._start = psutil.Process().create_time()
            self.laps: dict[str, float] = {"python + hydra": now - self._start}
        self._last = now

    def lap(self, name: str) -> None:
        now = time.time()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last  # a name used twice adds up
        self._last = now

    def summary(self, title: str) -> str:
        parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in self.laps.items())
        return f"{title} {self._last - self._start:.1f}s ({parts})"


class Interrupted(SystemExit):
    """A stop request arrived (`STOP_SIGNALS`); raised at the next round boundary (or at once, on a second request)
    so the run ends cleanly."""

    @property
    def signal_name(self) -> str:
        return signal.Signals(int(self.code) - 128).name


# The same signal again within this many seconds of the first is the same request delivered twice, not a second
# one: a group signal (`kill -TERM -<pgid>`, batch schedulers, `timeout`) reaches python directly and again through
# `uv run`, which forwards SIGTERM at once and SIGINT 200 ms later. A person asking again reads the notice first.
REPEAT_WINDOW = 1.0
_clock = time.monotonic
# What asks a run to stop: Ctrl-C, SIGTERM (`kill`, a scheduler's preemption or time limit) and SIGUSR2 (a batch
# scheduler's warning before the time limit: SLURM's `--signal=USR2@<s>`, submitit's default, sent early enough to
# finish the round; its default action would kill the run mid-round and leave its MLflow run RUNNING).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


@dataclasses.dataclass
class _StopRequest:
    """What the signals of one `tff_context` asked for."""

    signum: int | None = None  # the first request: stop at the next round boundary
    at: float = 0.0  # when it came (`_clock`)
    raised: bool = False  # `Interrupted` was raised: the run is stopping, nothing more to ask for
    # "rounds"; "finishing": the last round is trained, its evaluation and saving run to their end; "closing": the
    # context is being cleaned up, which runs to its end too
    phase: str = "rounds"
    told_again: bool = False
    shielded: int = 0  # inside `uninterrupted()`: a stop-now waits for the block to end
    deferred: int | None = None  # the signal of a stop-now that waits for it


_stop = _StopRequest()


def _say(line: str) -> None:
    # os.write, not print: a handler that prints while the interrupted code prints fails ("reentrant call").
    os.write(2, f"{line}\n".encode())


def _on_signal(signum: int, frame: types.FrameType | None) -> None:
    # TFF's C++ runtime and asyncio loop swallow a KeyboardInterrupt raised mid-round: record the request and stop at
    # the next round boundary (`check_interrupted`). A second request stops at once, except where stopping early
    # would only lose work: a checkpoint being written, the evaluation and saving after the last round.
    stop, now, name = _stop, _clock(), signal.Signals(signum).name
    if stop.raised:
        return
    if stop.signum is None:
        stop.signum, stop.at = signum, now
        if stop.phase == "finishing":
            _say(
                f"fedlm: got {name} after the last round: finishing its evaluation and saving the model, then stopping"
            )
        elif stop.phase == "rounds":
            _say(f"fedlm: got {name}, stopping after this round (again to stop now)")
        return
    if signum == stop.signum and now - stop.at < REPEAT_WINDOW:
        return  # the first request again (see REPEAT_WINDOW)
    if stop.phase == "closing":
        return
    if stop.phase == "finishing":
        if not stop.told_again:
            stop.told_again = True
            _say(
                f"fedlm: got {name} again: the last round is trained, finishing its evaluation and saving the model "
                "first (SIGKILL stops at once)"
            )
        return
    if stop.shielded:
        stop.deferred = signum
        return
    stop.raised = True
    raise Interrupted(128 + signum)


def check_interrupted() -> None:
    """Raise `Interrupted` if a stop was asked for (a round boundary: nothing is lost by stopping here)."""
    if _stop.signum is not None and _stop.phase == "rounds":
        _stop.raised = True
        raise Interrupted(128 + _stop.signum)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A second stop request waits for the end of this block (a checkpoint being written: stopping in the middle
    would leave it on disk but unrecorded)."""
    _stop.shielded += 1
    try:
        yield
    finally:
        _stop.shielded -= 1
    if _stop.deferred is not None and not _stop.shielded and _stop.phase == "rounds":
        signum, _stop.deferred, _stop.raised = _stop.deferred, None, True
        raise Interrupted(128 + signum)


def finishing() -> None:
    """The last round is trained: from here on stop requests no longer cut the run short (its final evaluation and
    model are seconds away, and stopping would only lose them); the run ends with the request's status."""
    if _stop.phase == "rounds":
        _stop.phase, _stop.deferred = "finishing", None


def last_level_cache_bytes(sysfs_cache_dir: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Size of the CPU's largest cache (Linux sysfs), or None if unknown."""
    sizes = {}
    for index in glob.glob(os.path.join(sysfs_cache_dir, "index*")):
        try:
            level = int(Path(index, "level").read_text())
            size = Path(index, "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        sizes[level] = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    return sizes[max(sizes)] if sizes else None


def concurrent_clients(setting: int | None, recurrent_bytes: int) -> int:
    """`runtime.max_concurrent_clients` -> TFF's `max_concurrent_computation_calls` (-1 = no limit).

    null: one client per CPU core, but no more than fit their recurrent kernels (`recurrent_bytes`: 12 x H^2 for a
    GRU(H), 16 x H^2 an LSTM(H), per layer; `fedlm.conf.schema.recurrent_kernel_bytes`) and the transposed copies
    the backward pass reads in the last-level cache together, and at least one. Measured
    on 2 cores with a 32 MB cache: GRU 256, 10 clients a round: two at a time 32% faster than TFF's default (all
    at once) and one at a time 36% slower than two; GRU 1024 (25 MB a client): one at a time 16% faster than two.
    """
    if setting is not None:
        return setting if setting > 0 else -1
    cores = os.cpu_count() or 1
    cache = last_level_cache_bytes()
    if cache is None:
        return cores
    return max(1, min(cores, cache // (2 * recurrent_bytes)))


def _is_resource_tracker(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return "resource_tracker" in " ".join(process.cmdline())
    return False


def _is_job_process(process: psutil.Process) -> bool:
    """A launcher's worker running jobs (a joblib/loky worker), not its helpers (loky's resource tracker, which
    must outlive the jobs) nor a TFF worker (which its job stops)."""
    return "python" in process.name() and not _is_resource_tracker(process)


def forward_stop_requests(on_request: Callable[[int], None]) -> None:
    """In the process that launches a sweep's jobs: Ctrl-C and SIGTERM do not stop it (a launcher stopping would
    kill its jobs' processes mid-round: joblib does), they are passed on to the jobs' processes, which stop after
    their round; `on_request(signum)` records it, so that the jobs not started yet do not start, and the sweep ends
    once the running ones have. The same request's copies (see REPEAT_WINDOW) are passed on once; a second request
    is passed on too (the jobs then stop at once)."""
    first: dict[str, float | int] = {}

    def handler(signum: int, frame: types.FrameType | None) -> None:
        now, name = _clock(), signal.Signals(signum).name
        if not first:
            first.update(signum=signum, at=now)
            on_request(signum)
            _say(
                f"fedlm: got {name}: the sweep's running jobs stop after their round, the others do not start "
                "(again to stop the running jobs at once)"
            )
        elif signum == first["signum"] and now - first["at"] < REPEAT_WINDOW:
            return
        for child in psutil.Process().children(recursive=False):  # each job's handler takes one copy per request
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if _is_job_process(child):
                    os.kill(child.pid, signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


class StartupInterrupted(Interrupted):
    """Ctrl-C or SIGTERM before the first round: the run had not started (no MLflow run, no checkpoint)."""


_in_startup = False  # inside `startup()` and before `tff_context`: a stop request stops at once
_startup_line = ""


def _on_startup_signal(signum: int, frame: types.FrameType | None) -> None:
    if not _in_startup:  # the run's own handlers are done with (its end): stop quietly with the signal's status
        raise Interrupted(128 + signum)
    for sig in STOP_SIGNALS:
        # Stopping: the same request's copy (uv forwards it) and later ones must not interrupt the exit.
        signal.signal(sig, signal.SIG_IGN)
    _say(f"fedlm: got {signal.Signals(signum).name} {_startup_line}")
    raise StartupInterrupted(128 + signum)


@contextlib.contextmanager
def startup(
    line: str = "during start-up: stopped before the first round (nothing to resume; a finished pretraining is cached)",
) -> Iterator[None]:
    """Ctrl-C and SIGTERM before the rounds start (reading data, pretraining, building the process) stop at once,
    saying `fedlm: got SIGINT <line>`, with the signal's status: nothing is lost, the run has no round and no MLflow
    run yet (a pretraining is cached only when complete). `tff_context` takes over for the rounds."""
    global _in_startup, _startup_line
    _in_startup, _startup_line = True, line
    previous = {sig: signal.signal(sig, _on_startup_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        _in_startup = False
        for sig, handler in previous.items():
            if signal.getsignal(sig) is _on_startup_signal:  # not stopping (a stop leaves them ignored)
                signal.signal(sig, handler)


# ---- TFF's worker as a command, remote workers, the round watchdog -------------------------------------------


def worker_binary() -> str:
    """The path of TFF's C++ `worker_binary` in this installation (found without importing TFF: ~0.5 s to start)."""
    spec = importlib.util.find_spec("tensorflow_federated")
    if spec is None or not spec.submodule_search_locations:
        raise RunFailed("tensorflow_federated is not installed: run `uv sync --frozen`")
    path = Path(next(iter(spec.submodule_search_locations)), "data", "worker_binary")
    if not path.is_file():
        raise RunFailed(f"TFF's worker binary is missing at {path}: reinstall with `uv sync --frozen --reinstall`")
    return str(path)


def _clean_signals_then_die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A `preexec_fn` for a worker we start ourselves: no signal blocked and SIGINT at its default (a launcher's
    process, or a shell's background job, may block or ignore SIGINT, and both survive exec: TFF's way to stop its
    worker, SIGINT, would then do nothing), and dying with its parent (`_die_with_parent`)."""
    die = _die_with_parent(parent_pid)

    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        die()

    return preexec


def start_worker(
    port: int, max_concurrent_computation_calls: int = -1, grpc_max_message_length_megabytes: int = 10000
) -> subprocess.Popen:
    """TFF's `worker_binary` on `port` (it listens on every interface: `[::]:port`), in its own process group (its
    stop is ours to send), dying with this process."""
    env = {"TF_CPP_MIN_LOG_LEVEL": "1", **os.environ}  # TF's INFO start-up lines off; warnings and errors stay
    return subprocess.Popen(
        [
            worker_binary(),
            f"--port={port}",
            f"--max_concurrent_computation_calls={max_concurrent_computation_calls}",
            f"--grpc_max_message_length_megabytes={grpc_max_message_length_megabytes}",
        ],
        preexec_fn=_clean_signals_then_die_with_parent(os.getpid()),
        process_group=0,
        env=env,
    )


def stop_worker(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """Stop a worker the way TFF does (SIGINT), killing it if it has not ended within `timeout`; its status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclasses.dataclass
class _RemoteWorkers:
    """The run's remote workers: their gRPC channels (closed to give up a stuck round) and the slices of clients each
    received (the cardinalities TFF created executors for)."""

    addresses: list[str]
    channels: list = dataclasses.field(default_factory=list)
    client_slices: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    timed_out: WorkerTimeout | None = None  # set by `watchdog`'s timer when it gave up

    def close(self) -> None:
        for channel in self.channels:
            with contextlib.suppress(Exception):
                channel.close()


_remote: _RemoteWorkers | None = None
_round_timeout: float | None = None
# runtime.round_timeout_s=null with runtime.workers: a dead worker is retried forever by TFF, silently; this stops it
REMOTE_ROUND_TIMEOUT_S = 600.0
_GRAPPLER_EMPTY_GRAPH = re.compile(rb"grappler_item_builder\.cc:\d+\] Failed to detect the fetch node\(s\)")


def _remote_context(addresses: Sequence[str], subrounds: int | None) -> tuple[object, _RemoteWorkers]:
    """TFF's mergeable execution context over one async context per remote worker: each round's clients cut into
    contiguous slices (one per subround), run concurrently, their partial aggregates merged. TFF 0.87's public
    pieces, as its own local context builds them, but on a channel to a given address instead of a worker it starts.
    """
    import grpc
    import tensorflow_federated as tff

    limit = 2 * 1000 * 1000 * 1000  # the limits TFF's local context sets on its channel (2 GB: a model's weights)
    options = [
        (f"grpc.{k}", limit) for k in ("max_message_length", "max_receive_message_length", "max_send_message_length")
    ]
    remote = _RemoteWorkers(list(addresses))
    contexts = []
    for address in addresses:
        channel = grpc.insecure_channel(worker_addresses.grpc_target(address), options)
        remote.channels.append(channel)
        stub = tff.framework.RemoteExecutorGrpcStub(channel)
        slices = remote.client_slices.setdefault(address, [])

        def stack_fn(cardinalities: dict, stub=stub, slices=slices) -> object:
            clients = cardinalities.setdefault(tff.CLIENTS, 0)  # none: no client data (TFF's local stack's default)
            if clients:
                slices.append(clients)
            executor = tff.framework.RemoteExecutor(stub)
            executor.set_cardinalities(cardinalities)
            return executor

        contexts.append(
            tff.framework.AsyncExecutionContext(
                executor_fn=tff.framework.ResourceManagingExecutorFactory(stack_fn),
                compiler_fn=tff.backends.native.desugar_and_transform_to_native,
                transform_args=tff.tensorflow.transform_args,
                transform_result=tff.tensorflow.transform_result,
            )
        )
    context = tff.backends.native.create_mergeable_comp_execution_context(contexts, num_subrounds=subrounds)
    return context, remote


def client_slices() -> dict[str, list[int]]:
    """The remote workers' addresses -> the sizes of the client slices each was given so far ({} locally)."""
    return {a: list(s) for a, s in _remote.client_slices.items()} if _remote is not None else {}


class WorkerTimeout(RunFailed):
    """A round did not end within `runtime.round_timeout_s` on the remote workers (TFF retries an unavailable worker
    forever)."""


def _timed_out(what: str, timeout: float, remote: _RemoteWorkers) -> WorkerTimeout:
    down = worker_addresses.unreachable(remote.addresses, timeout=1.0)
    if down:
        named = ", ".join(f"{address} ({reason})" for address, reason in down.items())
        return WorkerTimeout(
            f"{what} did not finish within runtime.round_timeout_s={timeout:g} s: worker {named} does not answer; "
            "start it again at that address, then resume"
        )
    return WorkerTimeout(
        f"{what} did not finish within runtime.round_timeout_s={timeout:g} s, though every worker of "
        "runtime.workers answers: rounds this slow need a larger runtime.round_timeout_s"
    )


@contextlib.contextmanager
def watchdog(what: str) -> Iterator[None]:
    """With remote workers, `what` (a round, an evaluation) must end within `runtime.round_timeout_s`: past it, a
    timer thread names the workers that do not answer and closes the channels to them, which ends TFF's calls in
    flight (cancelled, not retried): the round fails in the main thread as any error does, and is reported as
    `WorkerTimeout`. Nothing is raised asynchronously into the main thread (it may be inside TensorFlow). The run
    then stops as a failed round does: its last checkpoint kept, resumable."""
    remote, timeout = _remote, _round_timeout
    if remote is None or not timeout:
        yield
        return
    if remote.timed_out is not None:  # an earlier block's timer fired as it ended: the channels are closed
        raise remote.timed_out

    def expire() -> None:
        remote.timed_out = _timed_out(what, timeout, remote)
        remote.close()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as e:
        timer.cancel()
        timer.join()  # a timer that is firing has set its verdict before closing anything
        if remote.timed_out is not None:
            raise remote.timed_out from e
        raise
    timer.cancel()
    timer.join()
    if remote.timed_out is not None:  # fired just as the block ended: its result stands, but nothing more can run
        raise remote.timed_out


@contextlib.contextmanager
def tff_context(
    max_concurrent_computation_calls: int = -1,
    workers: Sequence[str] = (),
    subrounds: int | None = None,
    round_timeout_s: float | None = None,
    private_local_worker: bool = True,
) -> Iterator[None]:
    """Install TFF's local C++ execution context and clean its worker up on exit, error, Ctrl-C or SIGTERM; or, with
    `workers` (`host:port` of `python -m fedlm.worker`), the mergeable context over them (`_remote_context`).

    Ctrl-C and SIGTERM stop the run at the next round boundary (see `_on_signal`). One that came too late for a
    boundary (after the last round) ends the process with its status once the run is complete, so that a sweep or a
    scheduler's job stops there too.

    `max_concurrent_computation_calls`: clients TFF trains at once (-1 = no limit; see `concurrent_clients`); a
    remote worker has its own (`python -m fedlm.worker --max-concurrent-computation-calls`). `round_timeout_s`: see
    `watchdog` (with workers only; None: `REMOTE_ROUND_TIMEOUT_S`). `private_local_worker`: the local worker off the
    network (`_WorkerPopen`); false: listening on every interface, TFF's way."""
    import tensorflow_federated as tff

    global _stop, _in_startup, _remote, _round_timeout, _private_local_worker
    _in_startup = False
    _private_local_worker = private_local_worker
    install_parent_death_signal()
    quiet = contextlib.ExitStack()
    if workers:
        # TFF compiles each computation's parts for the mergeable context here, and TF's Grappler logs an error
        # for every part that returns nothing ("Failed to detect the fetch node(s), skipping this input"): noise.
        quiet.enter_context(console.stderr_without(_GRAPPLER_EMPTY_GRAPH))
        context, _remote = _remote_context(workers, subrounds)
        tff.framework.set_default_context(context)
        _round_timeout = round_timeout_s if round_timeout_s is not None else REMOTE_ROUND_TIMEOUT_S
    else:
        tff.backends.native.set_sync_local_cpp_execution_context(
            max_concurrent_computation_calls=max_concurrent_computation_calls
        )
    atexit.register(kill_children)
    stop = _stop = _StopRequest()
    previous = {sig: signal.signal(sig, _on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        stop.phase = "closing"  # a signal during the cleanup is only recorded: the cleanup runs to its end
        if _remote is not None:
            slices = ", ".join(f"{a} {sorted(set(s)) or 'none'}" for a, s in _remote.client_slices.items())
            print(f"fedlm: runtime.workers: client slices per worker (sizes seen): {slices}", flush=True)
            _remote.close()
            _remote = None
        _round_timeout = None
        # Replace the context now: the old one is collected while we are alive, and its `__del__` stops its
        # worker the way TFF means to (SIGINT, wait); anything left is then killed. Later TFF calls in this
        # process get a fresh worker instead of an error about a dead one.
        tff.backends.native.set_sync_local_cpp_execution_context()
        gc.collect()
        kill_children()
        for sig, handler in previous.items():
            # Stopping: a late copy of the request (uv's comes 200 ms after the group's) must find nothing to
            # interrupt, not the default handler in the middle of the interpreter's exit.
            signal.signal(sig, handler if stop.signum is None else signal.SIG_IGN)
        _stop = _StopRequest()
        quiet.close()
    if stop.signum is not None:  # nothing stopped the run: it completed before a round boundary could
        name = signal.Signals(stop.signum).name
        _say(f"fedlm: the run finished before {name} could stop it; exiting with status {128 + stop.signum}")
        raise Interrupted(128 + stop.signum)
