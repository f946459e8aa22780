"""Optional per-stage CPU accounting of the tiling pipeline, for benchmarks.

Code marks its stages with ``with stage("decode"): ...``. Off (the default) that is a shared no-op
context, so production runs pay about a dictionary-free function call. Inside :func:`recording`, each
stage adds the CPU seconds of its own thread (``time.thread_time``) to a total, so a background writer
thread and the reading thread are split correctly and other processes' load does not count. A stage
opened inside another one on the same thread is not counted separately: its time stays with the
outer stage (the thumbnail's own decoding is "thumbnail", not "decode").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

_OFF = nullcontext()
_totals: dict[str, float] | None = None
_lock = threading.Lock()
_local = threading.local()


class _Stage:
    __slots__ = ("name", "start", "outer")

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> None:
        self.outer = getattr(_local, "open", False)
        if not self.outer:
            _local.open = True
            self.start = time.thread_time()

    def __exit__(self, *exc) -> None:
        if self.outer:
            return
        elapsed = time.thread_time() - self.start
        _local.open = False
        with _lock:
            if _totals is not None:
                _totals[self.name] = _totals.get(self.name, 0.0) + elapsed


def stage(name: str) -> AbstractContextManager:
    """A context that charges its thread's CPU time to ``name`` while recording is on. (Work a stage
    hands to other threads, such as Zarr's own event loop, is not charged to it.)"""
    return _OFF if _totals is None else _Stage(name)


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Turn stage accounting on; the yielded dict holds CPU seconds per stage (filled as code runs)."""
    global _totals
    if _totals is not None:
        raise RuntimeError("stage recording is already on")
    totals: dict[str, float] = {}
    _totals = totals
    try:
        yield totals
    finally:
        _totals = None
