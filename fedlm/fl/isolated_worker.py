"""`python -m fedlm.fl.isolated_worker SOCKET BINARY ARGS...`: TFF's local worker off the network.

TFF's `worker_binary` listens on `[::]:PORT` (hard-coded: it has no address flag) and executes any graph it is sent.
This process enters a new user and network namespace (Linux, unprivileged), where only a loopback interface exists,
starts the binary there, and relays the unix-domain socket SOCKET (a file: reachable from fedlm's namespace, as a
file, by its user) to the binary's port on that loopback. No other host, and no other network namespace, can reach
the binary. SIGINT or SIGTERM (TFF stops its worker with SIGINT) stop the binary, then this process. Standard library
only: it starts in ~0.1 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_PR_SET_PDEATHSIG = 1
_CHUNK = 1 << 20


def enter_private_network() -> None:
    """A new user namespace (mapping our uid and gid: files we create keep their owner) and network namespace, with
    its loopback up. Raises OSError where unprivileged user namespaces are off."""
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWUSER | CLONE_NEWNET): {os.strerror(errno)}")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(_CHUNK):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _relay(client: socket.socket, port: int) -> None:
    """One connection from fedlm to the binary: bytes both ways until either side closes."""
    deadline = time.monotonic() + 60
    while True:  # the binary may still be starting: gRPC's client waits for its answer
        try:
            upstream = socket.create_connection(("::1", port))
            break
        except OSError:
            if time.monotonic() > deadline:
                client.close()
                return
            time.sleep(0.02)
    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def main(argv: list[str]) -> int:
    path, binary = argv[0], argv[1:]
    port = next(int(a.split("=", 1)[1]) for a in binary if a.startswith("--port="))
    _die_with_parent()  # fedlm killed (SIGKILL, OOM): this process goes, and the binary with it
    try:
        enter_private_network()
    except OSError as e:  # e.g. kernel.unprivileged_userns_clone=0, or AppArmor's restriction on Ubuntu 24.04
        print(
            f"fedlm: the local TFF worker listens on every interface: no private network namespace ({e}); see the "
            "README's security note",
            file=sys.stderr,
            flush=True,
        )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        _die_with_parent()

    worker = subprocess.Popen(binary, preexec_fn=preexec)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)  # fedlm's user only
    listener.listen()

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_relay, args=(client, port), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    while not stop.wait(0.2) and worker.poll() is None:
        pass
    if worker.poll() is None:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    listener.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
