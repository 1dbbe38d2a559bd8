"""Which submitted tasks may run: at most ``max_workers`` at once, the rest in order.

A task is given a slot when it is submitted if one is free, and only then counts
as started (``shutdown(cancel_futures=True)`` leaves it be, as CPython's executors
do); the others wait, and each reaped child hands its slot to the next of them.
Tasks with a slot wait in ``ready`` for the supervisor thread to start them.

``admit`` runs in any thread; everything else in the supervisor thread, except
``cancel_waiting``, which the executor calls too. One lock guards the three.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable

    from forkpool._future import ForkFuture
    from forkpool._options import ResolvedOptions


@attrs.define(eq=False)
class WorkItem:
    """A submitted task waiting for a free slot."""

    future: ForkFuture[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: ResolvedOptions
    # For a mold: the task as it travels there (see ChildTask.pickled).
    pickled: bytes | None = None
    # See ChildTask.prelude.
    prelude: Callable[[], object] | None = None


@attrs.define(eq=False)
class Slots:
    """The started count, the tasks ready to start, and those waiting for a slot."""

    limit: int
    started: int = 0
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _ready: collections.deque[WorkItem] = attrs.field(factory=collections.deque)
    _waiting: collections.deque[WorkItem] = attrs.field(factory=collections.deque)

    def admit(self, item: WorkItem) -> None:
        """Start ``item`` now if a slot is free and nobody waits; else queue it."""
        with self._lock:
            if self.started < self.limit and not self._waiting:
                item.future._start_running()  # noqa: SLF001 - a new future: always True
                self.started += 1
                self._ready.append(item)
            else:
                self._waiting.append(item)

    @property
    def any_ready(self) -> bool:
        """Some started task waits to be forked (deque reads are atomic)."""
        return bool(self._ready)

    @property
    def idle(self) -> bool:
        """Nothing started, nothing waiting."""
        return not self.started and not self._waiting

    def take_ready(self) -> list[WorkItem]:
        """The started tasks not forked yet, in order; they are the caller's now."""
        with self._lock:
            items = list(self._ready)
            self._ready.clear()
        return items

    def release(self) -> None:
        """A started task is over (or never forked): hand its slot to the next waiting."""
        with self._lock:
            self.started -= 1
            while self.started < self.limit and self._waiting:
                item = self._waiting.popleft()
                if item.future._start_running():  # noqa: SLF001 - the future's owner
                    self.started += 1
                    self._ready.append(item)

    def cancel_waiting(self, *, started_too: bool = False, contain: bool = False) -> None:
        """Cancel the tasks waiting for a slot (and, if asked, those not forked yet).

        A started one stays in ``ready``: the supervisor thread sees it cancelled
        and releases its slot. ``contain``: no done-callback's exception escapes.
        """
        with self._lock:
            items = [*self._waiting, *(self._ready if started_too else ())]
            self._waiting.clear()
        for item in items:
            item.future._cancel(contain=contain)  # noqa: SLF001

    def clear(self) -> list[WorkItem]:
        """Forget every task not forked yet (the supervisor failed); return them."""
        with self._lock:
            items = [*self._ready, *self._waiting]
            self._ready.clear()
            self._waiting.clear()
            self.started = 0
        return items
