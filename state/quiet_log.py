"""Rate-limited logging: an outage must produce a few lines, not one traceback per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class QuietLog:
    """Logs each distinct `key` at most once per `every` seconds; repeats in between are counted
    and reported (`(+N similar)`) on the next line that gets through."""

    def __init__(self, logger: logging.Logger, every: float = 30.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._muted: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> bool:
        """True when the line was written."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._muted[key] = self._muted.get(key, 0) + 1
            return False
        self._last[key] = now
        muted = self._muted.pop(key, 0)
        if muted:
            message += f" (+{muted} similar in the last {self.every:.0f}s)"
        self.logger.warning(message, *args)
        return True
