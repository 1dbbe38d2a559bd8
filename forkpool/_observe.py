"""Who hears how tasks begin and end: the seam that metrics and traces plug into.

forkpool itself imports no metrics or tracing library. ``forkpool.prometheus`` and
``forkpool.otel`` add an :class:`Observer` here; from then on every executor of the
process tells it about each task as it is submitted and as its future resolves,
hands it the spans a task's child sends back, and tells it about each orphan its
reaper stopped and each Redis error its bookkeeping met. With no observer, a task
pays one truth test.

Everything an observer hears has happened already; observers run in whichever
thread resolved the future (usually the supervisor's) and must be quick. What one
raises is logged and dropped: a metrics bug must never fail a task.

Running children are not counted here (that would cost every task): a scrape asks
:func:`running_children`, which looks at the live executors.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import attrs

from forkpool._errors import ChildDiedError, TaskTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future

    from forkpool._future import ForkFuture

logger = logging.getLogger("forkpool")

# How a task ended, as metrics label it.
OUTCOMES: Final = ("succeeded", "raised", "timed_out", "cancelled", "crashed", "memory_limit")


@attrs.frozen
class TaskEnded:
    """One task's end, as an observer hears it.

    The durations are None for a task that was never forked (cancelled while it
    waited, or its fork failed).
    """

    executor: str
    callable: str
    outcome: str
    # Seconds from submit() to the fork, the fork itself (or the mold's answer),
    # and from the fork to the reap.
    queued: float | None
    fork: float | None
    duration: float | None
    own_peak_bytes: int | None
    pid: int | None = None
    exitcode: int | None = None
    signal: int | None = None
    timeout: float | None = None
    # What each observer's task_submitted() returned for this task.
    notes: dict[int, object] = attrs.field(factory=dict)


class Observer(Protocol):
    """What metrics and traces implement (``forkpool.prometheus``, ``forkpool.otel``)."""

    def task_submitted(self, accounting: Accounting) -> object:
        """In the submitting thread: whatever the observer keeps for this task.

        It may set ``accounting.prelude``, which then runs first in the child.
        """
        ...

    def child_spans(self, payload: bytes) -> None:
        """A task's child sent finished spans (a SPANS frame)."""
        ...

    def task_ended(self, ended: TaskEnded) -> None:
        """A task's future resolved."""
        ...

    def orphans_reaped(self, executor: str, count: int) -> None:
        """``executor``'s reaper stopped ``count`` orphaned tasks."""
        ...

    def redis_error(self, executor: str) -> None:
        """A Redis command of ``executor``'s bookkeeping failed."""
        ...


class _Registry:
    """The observers and the live executors' children counts, for the whole process."""

    def __init__(self) -> None:
        # Replaced, never mutated: readers on other threads take it without a lock.
        self.observers: tuple[Observer, ...] = ()
        self.executors: weakref.WeakSet[Any] = weakref.WeakSet()


_REGISTRY: Final = _Registry()


def add_observer(observer: Observer) -> None:
    """Tell ``observer`` about every task from now on (once, however often added)."""
    if observer not in _REGISTRY.observers:
        _REGISTRY.observers = (*_REGISTRY.observers, observer)


def remove_observer(observer: Observer) -> None:
    """Stop telling ``observer``; a no-op if it is not there."""
    _REGISTRY.observers = tuple(o for o in _REGISTRY.observers if o is not observer)


def observing() -> bool:
    """Anyone listens: the executor then attaches its accounting to each future."""
    return bool(_REGISTRY.observers)


class ChildCounter(Protocol):
    """An executor as :func:`running_children` sees it."""

    name: str

    def running_children(self) -> int:
        """Its children that have been forked and not reaped."""
        ...


def add_executor(executor: ChildCounter) -> None:
    """Count ``executor``'s children in :func:`running_children` while it lives."""
    _REGISTRY.executors.add(executor)


def running_children() -> dict[str, int]:
    """Running children by executor name, over every live executor of the process."""
    counts: dict[str, int] = {}
    for executor in list(_REGISTRY.executors):
        counts[executor.name] = counts.get(executor.name, 0) + executor.running_children()
    return counts


@attrs.define
class Accounting:
    """What a future carries for its observers; the supervisor fills in the times.

    A task that was forked is reported when its child is reaped (:meth:`report`,
    from the supervisor), so that its run time and memory are known even if its
    future resolved earlier (``cancel()``). One never forked is reported by the
    done-callback (:meth:`__call__`). Either way, once.
    """

    executor: str
    callable: str
    memory_limited: bool
    submitted: float
    timeout: float | None = None
    queued: float | None = None
    fork: float | None = None
    exitcode: int | None = None
    signal: int | None = None
    # Runs first in the task's child (set by an observer at submit).
    prelude: Callable[[], object] | None = None
    notes: dict[int, object] = attrs.field(factory=dict)
    _once: threading.Lock = attrs.field(factory=threading.Lock)

    def begin(self) -> None:
        """In the submitting thread: let each observer take note of the task."""
        self.notes = _tell("a task's submit", lambda observer: observer.task_submitted(self))

    def __call__(self, done: Future[Any]) -> None:
        """The future's done-callback: report a task that was never forked."""
        future = cast("ForkFuture[Any]", done)
        if future.pid is None:
            self.report(future)

    def report(self, future: ForkFuture[Any]) -> None:
        """Tell every observer how the task ended (the first call only)."""
        if not self._once.acquire(blocking=False):
            return
        observers = _REGISTRY.observers
        if not observers:
            return
        usage = future.rusage
        ended = TaskEnded(
            executor=self.executor,
            callable=self.callable,
            outcome=outcome_of(future, memory_limited=self.memory_limited),
            queued=self.queued,
            fork=self.fork,
            duration=None if usage is None else usage.wall_time,
            own_peak_bytes=None if usage is None else usage.own_peak_bytes,
            pid=future.pid,
            exitcode=self.exitcode,
            signal=self.signal,
            timeout=self.timeout,
            notes=self.notes,
        )
        _tell("a task's end", lambda observer: observer.task_ended(ended))


def outcome_of(future: ForkFuture[Any], *, memory_limited: bool) -> str:
    """Which of :data:`OUTCOMES` a resolved future is."""
    if future.cancelled():
        return "cancelled"
    error = future.exception()
    if error is None:
        return "succeeded"
    if isinstance(error, TaskTimeoutError):
        return "timed_out"
    if isinstance(error, MemoryError) and memory_limited:
        return "memory_limit"
    if isinstance(error, ChildDiedError) or future.pid is None:
        return "crashed"  # it died, or never ran (its fork failed)
    return "raised"


def child_spans(payload: bytes) -> None:
    """Hand the spans a task's child sent to the observers."""
    _tell("a child's spans", lambda observer: observer.child_spans(payload))


def orphans_reaped(executor: str, count: int) -> None:
    """Tell the observers that ``executor``'s reaper stopped ``count`` orphans."""
    _tell("reaped orphans", lambda observer: observer.orphans_reaped(executor, count))


def redis_error(executor: str) -> None:
    """Tell the observers that a Redis command of ``executor`` failed."""
    _tell("a Redis error", lambda observer: observer.redis_error(executor))


def _tell(event: str, call: Callable[[Observer], object]) -> dict[int, object]:
    """``call`` each observer; what each answered, by its id. A failure is logged, dropped."""
    answers: dict[int, object] = {}
    for observer in _REGISTRY.observers:
        try:
            answers[id(observer)] = call(observer)
        except Exception:
            logger.exception("forkpool: an observer failed on %s; ignored", event)
    return answers
