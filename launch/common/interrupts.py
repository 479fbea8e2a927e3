"""Sections that a KeyboardInterrupt must not cut in two: a write to the tracking store.

A stop asked for "at once" (a second Ctrl-C, a SIGTERM to a sweep's driver) raises KeyboardInterrupt through
`interrupt()` from a signal handler: at once, or, inside an `uninterrupted()` section, when the section ends. Cut
inside SQLAlchemy, an MLflow write keeps its SQLite connection (and the database's lock) alive in the frames of the
KeyboardInterrupt in flight, and the run's KILLED end, written while it propagates, waits 20 s for that lock and
fails (`tests/test_interrupt.py`). Python runs signal handlers in the main thread only, so only the main thread's
sections defer one.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

_depth = 0  # how many uninterrupted() sections of the main thread are open
_pending = False  # an interrupt() asked for inside one, raised when the outermost ends


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def uninterrupted() -> Iterator[None]:
    """A section that `interrupt()` does not cut: one asked for inside it raises KeyboardInterrupt when the
    outermost section ends (also when the section raised: the KeyboardInterrupt replaces that exception)."""
    global _depth, _pending
    if not _in_main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending:
            _pending = False
            raise KeyboardInterrupt


def interrupt(force: bool = False) -> bool:
    """From a signal handler: raise KeyboardInterrupt now, or, inside an `uninterrupted()` section (unless `force`),
    when it ends. Returns (True) only in that second case: the interrupt waits for the section."""
    global _pending
    if _depth and not force:  # sections count in the main thread only, where handlers run
        _pending = True
        return True
    raise KeyboardInterrupt
