"""`runtime.workers`: the addresses of remote TFF workers (`python -m fedlm.worker`), and whether they answer.

Light (no TensorFlow): a run checks its workers before the 8 s TensorFlow import, with a plain TCP connect: a worker
that is down, a mistyped host or a firewalled port is refused in a second, naming every one that does not answer.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from fedlm.errors import ConfigError

CONNECT_TIMEOUT_S = 2.0  # a worker on a private network answers a TCP connect in milliseconds


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` or `[ipv6]:port` -> (host, port); ConfigError naming the value otherwise."""
    text = str(address).strip()
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"runtime.workers: {address!r} is no worker address; allowed host:port (e.g. node1:8000, "
            "[::1]:8000), where `python -m fedlm.worker --port 8000` runs"
        )
    return host, int(port)


def grpc_target(address: str) -> str:
    """The address as gRPC takes it (IPv6 in brackets)."""
    host, port = parse_address(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def why_unreachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None if something accepts a TCP connection at `address`, else the reason (refused, timed out, unknown host)."""
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as e:
        return f"unknown host ({e.strerror})"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as e:
        return e.strerror or type(e).__name__


def unreachable(addresses: Sequence[str], timeout: float = CONNECT_TIMEOUT_S) -> dict[str, str]:
    """The addresses that do not accept a TCP connection, with the reason; probed at once (one timeout in all)."""
    if not addresses:
        return {}
    with ThreadPoolExecutor(len(addresses)) as pool:
        reasons = pool.map(lambda a: why_unreachable(a, timeout), addresses)
    return {address: reason for address, reason in zip(addresses, reasons) if reason is not None}


def check_workers(addresses: Sequence[str], timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Before TensorFlow: every address well-formed, none twice, every one accepting connections."""
    for address in addresses:
        parse_address(address)
    seen = [grpc_target(a) for a in addresses]
    if twice := sorted({a for a in seen if seen.count(a) > 1}):
        raise ConfigError(f"runtime.workers: {', '.join(twice)} given twice; each worker once")
    if down := unreachable(addresses, timeout):
        named = "; ".join(f"{address}: {reason}" for address, reason in down.items())
        raise ConfigError(
            f"runtime.workers: {len(down)} of {len(addresses)} unreachable ({named}); start "
            "`python -m fedlm.worker --port PORT` there, or leave runtime.workers empty for the local worker"
        )
