"""Small helpers with no fedlm concept of their own: nested-mapping flattening, atomic file writes, content
digests for cache keys, and running one coroutine to completion from synchronous code."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import Awaitable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def flatten(tree: Mapping[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a/b": leaf} (TFF's metric paths; sep="." for config keys)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, sep, key + sep))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """A temporary path beside `path` to write to; renamed onto `path` if the block succeeds, removed if not.
    Readers never see half a file, and a killed writer leaves at most a `.tmp` file behind.
    `suffix` keeps a file type that writers infer from the name (Keras: `.h5`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield str(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


@contextlib.contextmanager
def waiting_lock(path: str | os.PathLike, waiting: str) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created); if another process holds it, print `waiting` once and wait.
    The kernel releases it when the holder dies, even by SIGKILL: no stale lock remains."""
    import fcntl

    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(waiting, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def digest(key: Any, length: int = 12) -> str:
    """A short content hash of a JSON-serializable value (key order does not matter): cache file names."""
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:length]


def run_sync(awaitable: Awaitable[T]) -> T:
    """Run a coroutine to completion on this thread's event loop (TFF's program API is async; fedlm is not).

    Not `asyncio.run`: it closes the loop and leaves the thread without one, which TFF's later calls need."""
    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:  # a thread without a loop (e.g. a joblib worker thread)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return loop.run_until_complete(awaitable)
