"""Rank-0 output: log lines everywhere, a tqdm bar on a terminal; reading a failed process's output."""

from __future__ import annotations

import logging
import re
import sys
from typing import Dict

# Libraries whose INFO lines say nothing a user acts on (setuptools' compiler, probed by DeepSpeed's op
# builders, logs every gcc command line).
QUIET_LOGGERS = ("compilers", "distutils", "setuptools")


def setup_logging(is_main: bool) -> None:
    """INFO on rank 0, warnings only elsewhere; one format for the whole suite."""
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        stream=sys.stdout,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class EpochProgress:
    """Progress of one epoch: a tqdm bar on a TTY, a plain log line per report otherwise."""

    def __init__(self, total: int, epoch: int, epochs: int, active: bool, start: int = 0):
        self.total, self.epoch, self.epochs, self.active = total, epoch, epochs, active
        self.bar = None
        if active and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=start, desc=f"epoch {epoch + 1}/{epochs}", dynamic_ncols=True, leave=False
            )

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def report(self, done: int, values: Dict[str, float]) -> None:
        if not self.active:
            return
        text = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        else:
            logging.getLogger("launch.train").info(
                "epoch %d/%d step %d/%d %s", self.epoch + 1, self.epochs, done, self.total, text
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b: ")


def last_exception_line(text: str) -> str:
    """The last `SomeError: message` line of a traceback or log (ANSI colours and torch's `[rankN]:` prefix
    removed), or ''."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = (re.sub(r"^\[rank\d+\]:\s*", "", line.strip()) for line in plain.splitlines())
    found = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return found[-1] if found else ""
