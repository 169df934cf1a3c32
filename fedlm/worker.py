"""`python -m fedlm.worker --port P`: TFF's C++ worker of this installation, for runs with `runtime.workers=[host:P]`.

It listens on every interface, unauthenticated, and executes whatever computation it is sent: private networks only.
Ctrl-C or SIGTERM stops it (TFF's way: SIGINT to the binary), exiting 128 + the signal.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
import types

from fedlm.fl import runtime


class _Stop(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, frame: types.FrameType | None) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # stopping: `uv run`'s copy of a group signal must not interrupt it
        signal.signal(sig, signal.SIG_IGN)
    raise _Stop(signum)


def _port_taken(port: int) -> str | None:
    """Why the binary could not listen on [::]:port (it would only say so in a gRPC log line), or None."""
    family, address = (socket.AF_INET6, "::") if socket.has_ipv6 else (socket.AF_INET, "0.0.0.0")
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((address, port))
    except OSError as e:
        return e.strerror
    return None


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fedlm.worker",
        description="TFF's worker for runtime.workers=[host:PORT]: it listens on every interface, unauthenticated, "
        "and executes any computation it is sent; run it on a private network only",
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on (every interface)")
    parser.add_argument(
        "--max-concurrent-computation-calls",
        type=int,
        default=os.cpu_count() or 1,
        help="clients trained at once on this node (default: one per CPU core, %(default)s; <= 0: no limit)",
    )
    parser.add_argument(
        "--grpc-max-message-length-megabytes",
        type=int,
        default=10000,
        help="largest gRPC message the worker takes (default %(default)s, TFF's)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port={args.port}: must be 1-65535")
    if args.grpc_max_message_length_megabytes < 1:
        parser.error(f"--grpc-max-message-length-megabytes={args.grpc_max_message_length_megabytes}: must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _arguments(sys.argv[1:] if argv is None else argv)
    if reason := _port_taken(args.port):
        print(f"fedlm.worker: error: --port={args.port}: cannot listen there ({reason})", file=sys.stderr)
        raise SystemExit(2)
    # Started by a launcher that blocks SIGINT (Ray's workers) or as a shell's background job (SIGINT ignored): both
    # are inherited, and would leave Ctrl-C without effect here and TFF's way of stopping the binary (SIGINT) too.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    started = time.monotonic()
    process = None
    try:
        process = runtime.start_worker(
            args.port, args.max_concurrent_computation_calls, args.grpc_max_message_length_megabytes
        )
        while not _listening(args.port):
            if process.poll() is not None:
                print(f"fedlm.worker: error: TFF's worker exited with status {process.returncode}", file=sys.stderr)
                raise SystemExit(1)
            time.sleep(0.05)
        print(
            f"fedlm.worker: TFF worker (pid {process.pid}) listening on [::]:{args.port}, every interface, ready in "
            f"{time.monotonic() - started:.1f} s; it executes any computation sent to it, unauthenticated: private "
            "networks only. Ctrl-C or SIGTERM stops it",
            flush=True,
        )
        status = process.wait()
        print(f"fedlm.worker: TFF's worker exited by itself with status {status}", file=sys.stderr, flush=True)
        raise SystemExit(status if status >= 0 else 128 - status)
    except _Stop as stop:
        if process is not None and runtime.stop_worker(process) == -signal.SIGKILL:
            print("fedlm.worker: TFF's worker did not stop on SIGINT: killed", file=sys.stderr, flush=True)
        print(f"fedlm.worker: stopped by {signal.Signals(stop.signum).name}", file=sys.stderr, flush=True)
        raise SystemExit(128 + stop.signum) from None


if __name__ == "__main__":
    main()
