"""Ctrl-C during a build must stop it before anything is published, every time.

DuckDB checks for signals while a query runs and turns one into "query interrupted"; but a
SIGINT that lands as a query finishes can be taken by that check and then dropped. Our own
handler runs in either case, so it remembers the request, and the build asks `check()` before
each step that publishes.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class InterruptGuard:
    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C came, even if a query swallowed it."""
        if self.requested:
            raise KeyboardInterrupt
