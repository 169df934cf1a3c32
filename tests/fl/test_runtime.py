"""How many clients TFF trains at once by default; what the startup line counts; what Ctrl-C and SIGTERM ask for;
the TFF worker's end."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from fedlm.conf import schema
from fedlm.fl import runtime
from tests.conftest import ROOT, assert_session_ended, compose_config


@pytest.mark.parametrize(
    "cache_mb, cores, units, want",
    [
        (32, 2, 256, 2),  # 3 MB of recurrent weights a client: one per core
        (32, 2, 1024, 1),  # 25 MB a client: two would not fit in the cache together
        (32, 8, 512, 5),  # 6 MB a client: as many as fit, below the core count
        (1, 4, 1024, 1),  # never fewer than one
        (None, 4, 1024, 4),  # cache size unknown: one per core
    ],
)
def test_default_is_one_per_core_as_far_as_the_cache_holds(monkeypatch, cache_mb, cores, units, want):
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(runtime, "last_level_cache_bytes", lambda: cache_mb and cache_mb * 2**20)
    assert runtime.concurrent_clients(None, 12 * units**2) == want  # a GRU(units)'s recurrent kernel, float32


def test_the_cache_share_counts_every_layer_and_the_lstms_fourth_gate():
    cfg = compose_config(["model=reddi"])  # 2 x LSTM 256: 2 x 16 x 256^2 bytes, 2 MB
    assert schema.recurrent_kernel_bytes(cfg.model) == 2 * 16 * 256**2
    gru = compose_config(["model=tutorial"])
    assert schema.recurrent_kernel_bytes(gru.model) == 12 * 1024**2


def test_explicit_setting_wins_and_zero_means_no_limit():
    assert runtime.concurrent_clients(3, 12 * 1024**2) == 3
    assert runtime.concurrent_clients(0, 12 * 256**2) == -1


def test_last_level_cache_is_the_highest_levels_size(tmp_path):
    for index, (level, size) in enumerate([(1, "32K"), (2, "1024K"), (3, "32768K"), (1, "32K")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "level").write_text(f"{level}\n")
        (tmp_path / f"index{index}" / "size").write_text(f"{size}\n")
    assert runtime.last_level_cache_bytes(str(tmp_path)) == 32 * 2**20
    assert runtime.last_level_cache_bytes(str(tmp_path / "missing")) is None  # no sysfs: unknown


def test_startup_counts_the_process_start_once_then_each_job_from_its_own_start():
    """A multirun's later jobs share the process: their startup line must not include the earlier jobs."""
    code = (
        "from fedlm.fl import runtime; first, later = runtime.Stopwatch(), runtime.Stopwatch(); later.lap('data'); "
        "print(sorted(first.laps), sorted(later.laps))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[0] == "['python + hydra'] ['data']"


# --- stop requests (Ctrl-C, SIGTERM) ----------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    """A fresh stop request and a clock the test moves; nothing is installed as a signal handler."""
    clock = _Clock()
    monkeypatch.setattr(runtime, "_clock", clock)
    monkeypatch.setattr(runtime, "_stop", runtime._StopRequest())
    return clock


def test_a_request_delivered_twice_is_one_request_and_a_later_one_stops_at_once(clock, capfd):
    runtime._on_signal(signal.SIGTERM, None)
    clock.now += 0.0002  # uv's forwarded copy of a group SIGTERM
    runtime._on_signal(signal.SIGTERM, None)
    with pytest.raises(runtime.Interrupted) as stopped:  # the round boundary still stops
        runtime.check_interrupted()
    assert stopped.value.code == 143
    assert capfd.readouterr().err.count("got SIGTERM, stopping after this round") == 1


def test_a_second_request_after_the_window_stops_at_once_then_nothing_more_is_asked(clock):
    runtime._on_signal(signal.SIGINT, None)
    clock.now += 0.2  # uv forwards SIGINT after 200 ms
    runtime._on_signal(signal.SIGINT, None)
    clock.now += runtime.REPEAT_WINDOW  # a person pressing Ctrl-C again after the notice
    with pytest.raises(runtime.Interrupted) as stopped:
        runtime._on_signal(signal.SIGINT, None)
    assert stopped.value.code == 130
    clock.now += 0.2
    runtime._on_signal(signal.SIGINT, None)  # that one's copy, during the cleanup: nothing more to do


def test_another_signal_soon_after_is_a_second_request(clock):
    runtime._on_signal(signal.SIGTERM, None)
    clock.now += 0.1
    with pytest.raises(runtime.Interrupted) as stopped:
        runtime._on_signal(signal.SIGINT, None)
    assert stopped.value.code == 130


def test_a_second_request_waits_for_a_checkpoint_being_written(clock):
    runtime._on_signal(signal.SIGINT, None)
    clock.now += runtime.REPEAT_WINDOW + 1
    written = []
    with pytest.raises(runtime.Interrupted), runtime.uninterrupted():
        runtime._on_signal(signal.SIGINT, None)
        written.append(True)  # the block goes on to its end
    assert written == [True]


def test_after_the_last_round_requests_let_the_run_finish(clock, capfd):
    runtime.finishing()
    runtime._on_signal(signal.SIGTERM, None)
    clock.now += runtime.REPEAT_WINDOW + 1
    runtime._on_signal(signal.SIGTERM, None)  # deliberate, still no stop
    runtime.check_interrupted()  # no round boundary stops it either
    err = capfd.readouterr().err
    assert "got SIGTERM after the last round: finishing" in err and "got SIGTERM again" in err


@pytest.mark.e2e
def test_a_context_referenced_after_its_cleanup_does_not_signal_its_stopped_worker():
    """A round given up mid-computation (a second Ctrl-C) leaves TFF's context referenced beyond `tff_context`, whose
    cleanup stops and reaps the worker; TFF's `__del__` at exit then signalled the worker's pid: 'Exception ignored
    in: ServiceManager.__del__ ... ProcessLookupError' (or a signal to whichever process has that pid by then)."""
    code = """if True:
        import tensorflow as tf
        import tensorflow_federated as tff
        from fedlm.fl import runtime

        kept = []
        with runtime.tff_context():
            print(tff.tensorflow.computation(lambda: tf.constant(1))())  # starts the worker
            kept.append(tff.framework.get_context_stack().current)  # what the abandoned round's frames hold
        print("left the context", flush=True)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, err = proc.communicate(timeout=300)
    assert_session_ended(proc.pid)
    assert proc.returncode == 0 and "left the context" in out, err[-3000:]
    assert "Exception ignored" not in err and "ProcessLookupError" not in err, err[-3000:]


def _signal_bits(status: str, field: str) -> int:
    (line,) = [x for x in status.splitlines() if x.startswith(f"{field}:")]
    return int(line.split()[1], 16)


def test_the_worker_starts_with_no_signal_blocked_and_sigint_at_its_default():
    """A launcher that blocks SIGINT (Ray's job workers) or ignores it: TFF's worker, started from TFF's event-loop
    thread as TFF does, must still get SIGINT (TFF stops it with SIGINT, then waits for it)."""
    script = (
        "import signal, threading\n"
        "from fedlm.fl import runtime\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGUSR1})\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "out = {}\n"
        "def start(): out['text'] = runtime._WorkerPopen(['cat', '/proc/self/status'], stdout=-1, text=True)"
        ".communicate()[0]\n"
        "thread = threading.Thread(target=start); thread.start(); thread.join()\n"
        "print(open('/proc/self/status').read()); print('=====')\n"
        "print(out['text'])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    launcher, worker = result.stdout.split("=====")
    sigint = 1 << (signal.SIGINT - 1)
    assert _signal_bits(launcher, "SigBlk") & sigint and _signal_bits(launcher, "SigIgn") & sigint  # the premise
    assert _signal_bits(worker, "SigBlk") == 0 and not _signal_bits(worker, "SigIgn") & sigint, worker
