"""One line on stderr that says how long work is going, rewritten in place.

On by default only when stderr is a terminal (``--progress`` forces it,
``--no-progress`` silences it); rewritten at most ten times a second.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

MIN_INTERVAL_S = 0.1


class ProgressLine:
    def __init__(self, enabled: bool | None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._shown = 0.0
        self._width = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def update(self, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._shown < MIN_INTERVAL_S):
            return
        self._shown = now
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        """Remove the line, so what is printed next starts clean."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
