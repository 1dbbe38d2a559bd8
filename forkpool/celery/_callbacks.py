"""The Celery pool's callback thread: Celery's callbacks, in order, off the supervisor."""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger("forkpool.celery")


class CallbackThread:
    """Runs calls in order, in one thread, and timed calls when they fall due."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._timed: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="forkpool-celery-callbacks", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._condition:
            self._calls.append((fn, args))
            self._condition.notify()

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        with self._condition:
            heapq.heappush(self._timed, (time.monotonic() + delay, next(self._order), fn, args))
            self._condition.notify()

    def stop(self) -> None:
        """Run what is queued (timed calls are dropped), then end the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._condition:
                fn, args = self._next()
            if fn is None:
                return
            try:
                fn(*args)
            except Exception:
                logger.exception("forkpool's Celery callback thread: %r raised", fn)

    def _next(self) -> tuple[Callable[..., Any] | None, tuple[Any, ...]]:
        """The next call due (condition held); (None, ()) once stopped and drained."""
        while True:
            now = time.monotonic()
            if self._timed and self._timed[0][0] <= now and not self._stopping:
                _, _, fn, args = heapq.heappop(self._timed)
                return fn, args
            if self._calls:
                return self._calls.popleft()
            if self._stopping:
                return None, ()
            wait = self._timed[0][0] - now if self._timed else None
            self._condition.wait(wait)
