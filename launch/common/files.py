"""Files that are either wholly written or not there: write beside, then rename over."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union


def atomic_write(path: Union[str, Path], write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary name beside `path`, then rename it to `path` (one filesystem
    step: a reader, or a process killed mid-write, never sees half a file). Creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    """Write `text` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))
