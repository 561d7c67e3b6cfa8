"""Progress on stderr for train, analyze and build: a tqdm bar on a terminal; plain lines where
stderr is not one (CI logs, files), with no carriage returns, one per named stage and, for long
runs, one per tenth of the work."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def progress(total: int, desc: str, unit: str = "step", initial: int = 0, enabled: bool = True,
             stream: Optional[TextIO] = None):
    """An object with tqdm's update / set_postfix / set_postfix_str / close for `total` units."""
    stream = stream or sys.stderr
    if enabled and _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream)
    return LineProgress(total, desc, unit, initial, stream if enabled else None)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """Progress as whole lines ('reportgen: train: 400/4000 steps (10%), loss=0.31, 12 s'): one
    when a stage is named (set_postfix_str), for runs of more than MANY units one per tenth, and
    one when all is done; set_postfix only changes what the next line says. `stream` None is
    silent."""

    MANY = 20

    def __init__(self, total: int, desc: str, unit: str, initial: int, stream: Optional[TextIO]):
        self.total, self.desc, self.unit, self.n, self.stream = total, desc, unit, initial, stream
        self.postfix = ""
        self.start = time.monotonic()
        self.tenth = self._tenth(initial)

    def _tenth(self, n: int) -> int:
        return 10 * n // self.total if self.total else 0

    def update(self, n: int = 1) -> None:
        self.n += n
        tenth = self._tenth(self.n)
        if tenth > self.tenth and self.total > self.MANY:
            self._line()
        self.tenth = tenth

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s
        self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """A last line when the work is all done (not after an interruption or an early stop)."""
        if self.total and self.n >= self.total:
            self._line(done=True)
        self.stream = None

    def _line(self, done: bool = False) -> None:
        if self.stream is None:
            return
        pct = f" ({100 * self.n // self.total}%)" if self.total else ""
        parts = [f"{self.n}/{self.total} {self.unit}s{pct}", *([self.postfix] if self.postfix else []),
                 f"{'done in ' if done else ''}{time.monotonic() - self.start:.0f} s"]
        print(f"reportgen: {self.desc}: " + ", ".join(parts), file=self.stream, flush=True)
