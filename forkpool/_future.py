"""ForkFuture: a concurrent.futures.Future whose cancel() also stops a running child."""

from __future__ import annotations

import logging
import signal
import time
from concurrent.futures import Future
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import TYPE_CHECKING, Any, TypeVar

from forkpool._usage import ResourceUsage

if TYPE_CHECKING:
    import resource
    from collections.abc import Callable

    from forkpool._observe import Accounting

logger = logging.getLogger("forkpool")

T = TypeVar("T")

# The longest a wait for a result goes without running Python code (see _wait).
_WAIT_SLICE = 0.1
_DONE = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})

# As Future's own repr names its states: a cancelled future is "cancelled".
_STATE_NAMES = {
    PENDING: "pending",
    RUNNING: "running",
    CANCELLED: "cancelled",
    CANCELLED_AND_NOTIFIED: "cancelled",
    FINISHED: "finished",
}


class ForkFuture(Future[T]):
    """The result of one task that runs in its own forked child.

    It is a :class:`concurrent.futures.Future`, so ``wait``, ``as_completed``,
    ``asyncio.wrap_future`` and ``loop.run_in_executor`` accept it. One deliberate
    difference from ProcessPoolExecutor's futures: :meth:`cancel` on a *running*
    task stops its child (the whole process group) and returns True.

    Attributes:
        pid: The child's process id, None until the task has been forked.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pid: int | None = None
        # wait4's answer, turned into a ResourceUsage only if someone asks.
        self._raw_usage: resource.struct_rusage | None = None
        self._wall_time = 0.0
        self._resident_at_start: int | None = None
        self._reaped = False
        self._usage: ResourceUsage | None = None
        # Set by the executor: asks its supervisor to drop or stop this task, for
        # cancel(), or because the wait for its result ended in an exception.
        self._on_cancel: Callable[[ForkFuture[T]], None] | None = None
        self._on_wait_ended: Callable[[ForkFuture[T], BaseException], None] | None = None
        self._on_signal: Callable[[ForkFuture[T], int], None] | None = None
        self._progress: object = None
        self._progress_seen = False
        self._progress_callbacks: list[Callable[[ForkFuture[T], Any], object]] = []
        # For metrics, when they are on (see _observe); the supervisor adds times.
        self._accounting: Accounting | None = None
        # The task's id, pid and callable, for log lines about it (set at its fork).
        self._log_extra: dict[str, object] | None = None

    @property
    def rusage(self) -> ResourceUsage | None:
        """What the child used (:class:`ResourceUsage`), once it is reaped; else None."""
        if self._usage is None and self._reaped:
            self._usage = ResourceUsage.from_rusage(
                self._raw_usage, self._wall_time, self._resident_at_start
            )
        return self._usage

    def _set_usage(
        self,
        raw: resource.struct_rusage | None,
        wall_time: float,
        resident_at_start: int | None = None,
    ) -> None:
        """Record the reaped child's usage (None if something else reaped it)."""
        self._raw_usage = raw
        self._wall_time = wall_time
        self._resident_at_start = resident_at_start
        self._reaped = True

    @property
    def progress(self) -> object:
        """The latest value the task sent with ``report_progress()`` (None before any)."""
        return self._progress

    def add_progress_callback(self, fn: Callable[[ForkFuture[T], Any], object]) -> None:
        """Call ``fn(future, value)`` for each progress value the task reports.

        Callbacks run in the executor's supervisor thread, so they should be quick.
        If the task already reported progress, ``fn`` is called at once, in this
        thread, with the latest value; none is lost. Exceptions from ``fn`` are
        logged and ignored; in the supervisor thread even ``SystemExit`` and
        ``KeyboardInterrupt`` are, so that no callback can stop other tasks.
        """
        with self._condition:
            self._progress_callbacks.append(fn)
            seen, latest = self._progress_seen, self._progress
        if seen:
            _call_progress_callback(fn, self, latest, contain=False)

    def _report_progress(self, value: object) -> None:
        with self._condition:
            self._progress = value
            self._progress_seen = True
            callbacks = list(self._progress_callbacks)
        for fn in callbacks:
            _call_progress_callback(fn, self, value, contain=True)

    def __repr__(self) -> str:
        # Future's internals (_state, _condition, ...) are read and written here as
        # CPython's own executors do: a subclass has no other way to add a state
        # transition, and they have been stable from 3.8 through 3.13.
        with self._condition:
            state, error, result = self._state, self._exception, self._result
        outcome = ""
        if state == FINISHED:
            outcome = (
                f" raised {type(error).__name__}"
                if error is not None
                else f" returned {type(result).__name__}"
            )
        where = f" pid={self.pid}" if self.pid is not None else ""
        return (
            f"<{type(self).__name__} at {id(self):#x} "
            f"state={_STATE_NAMES.get(state, state.lower())}{outcome}{where}>"
        )

    def result(self, timeout: float | None = None) -> T:
        """The task's result; see :meth:`concurrent.futures.Future.result`.

        The wait can be interrupted: it lets asynchronous exceptions (a job
        queue's time limit raised into this thread, a signal handler's) land within
        a tenth of a second. One that does stops the task's child, which has no one
        left to report to, and goes on up.
        """
        self._wait(timeout)
        return super().result(timeout=0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception; interruptible as :meth:`result` is."""
        self._wait(timeout)
        return super().exception(timeout=0)

    def _wait(self, timeout: float | None, *, stop_on_error: bool = True) -> None:
        """Wait until done or ``timeout`` passes, in slices an exception can end.

        An exception that ends the wait stops the task, unless ``stop_on_error`` is
        false: for a caller that handles some exceptions and waits on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._condition:
                while self._state not in _DONE:
                    remaining = _WAIT_SLICE if deadline is None else deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    # One long wait is one C call: an exception set asynchronously on
                    # this thread would only land once it returns.
                    self._condition.wait(min(remaining, _WAIT_SLICE))
        except BaseException as exc:
            if not stop_on_error:
                raise
            with self._condition:
                on_wait_ended, done = self._on_wait_ended, self._state in _DONE
            if on_wait_ended is not None and not done:
                on_wait_ended(self, exc)
            raise

    def cancel(self) -> bool:
        """Cancel the task; if it is already running, stop its child.

        Returns:
            False if the task already finished, else True. A running task's child is
            sent SIGTERM, then SIGKILL after the kill grace; the future is cancelled
            at once and never receives that child's outcome.
        """
        return self._cancel(contain=False)

    def send_signal(self, signum: int) -> bool:
        """Send signal ``signum`` to the task's child, if it is running.

        The child alone gets it, not the rest of its process group: a handler in
        the task decides what its own processes hear. (Whatever of the group is
        left when the child exits is stopped, as always.) The signal is sent by
        the executor's supervisor thread, the only one that may signal a child
        (see its notes on recycled pids), moments after this returns.

        Returns:
            True if the task has a child that has not been reaped; False before
            it is forked and once it is done.

        Raises:
            ValueError: ``signum`` is not a signal number of this platform.
        """
        if (
            not isinstance(signum, int)
            or isinstance(signum, bool)
            or signum not in signal.valid_signals()
        ):
            msg = f"send_signal() needs a signal number, got {signum!r}"
            raise ValueError(msg)
        with self._condition:
            on_signal = self._on_signal if self._state == RUNNING else None
            forked = self.pid is not None
        if on_signal is None or not forked:
            return False
        on_signal(self, signum)
        return True

    def _cancel(self, *, contain: bool) -> bool:
        """cancel(); with ``contain``, no done-callback's exception escapes (forkpool's threads)."""
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            # Skip the plain CANCELLED state: our supervisor never calls
            # set_running_or_notify_cancel(), so waiters must be told now, or
            # concurrent.futures.wait() would hang on a cancelled pending future.
            self._state = CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
            on_cancel, self._on_cancel = self._on_cancel, None
            self._on_wait_ended = self._on_signal = None
        # The child is stopped before any callback runs: one that raises must not
        # leave it running.
        if on_cancel is not None:
            on_cancel(self)
        self._run_done_callbacks(contain=contain)
        return True

    def _start_running(self) -> bool:
        """Move PENDING to RUNNING; False if the future was cancelled meanwhile."""
        with self._condition:
            if self._state != PENDING:
                return False
            self._state = RUNNING
            return True

    def _resolve(self, result: object = None, exception: BaseException | None = None) -> None:
        """Set the outcome unless the future was cancelled (or resolved) meanwhile.

        Called in the supervisor thread, so done-callbacks are contained.
        """
        with self._condition:
            if self._state != RUNNING:
                return
            self._on_cancel = self._on_wait_ended = self._on_signal = None
            if exception is not None:
                self._exception = exception
            else:
                self._result = result  # type: ignore[assignment]
            self._state = FINISHED
            for waiter in self._waiters:
                if exception is not None:
                    waiter.add_exception(self)
                else:
                    waiter.add_result(self)
            self._condition.notify_all()
        self._run_done_callbacks(contain=True)

    def _run_done_callbacks(self, *, contain: bool) -> None:
        """Call the done-callbacks as Future does, logging what they raise.

        Future lets a BaseException through, which in forkpool's supervisor thread
        would stop every other task; with ``contain`` it is logged like the rest.
        """
        callbacks: list[Callable[[ForkFuture[T]], object]] = self._done_callbacks  # type: ignore[attr-defined]
        for callback in callbacks:
            try:
                callback(self)
            except BaseException as exc:
                if not (contain or isinstance(exc, Exception)):
                    raise
                logger.exception("exception calling callback for %r", self, extra=self._log_extra)


def _call_progress_callback(
    fn: Callable[[ForkFuture[Any], Any], object],
    future: ForkFuture[Any],
    value: object,
    *,
    contain: bool,
) -> None:
    try:
        fn(future, value)
    except BaseException as exc:
        if not (contain or isinstance(exc, Exception)):
            raise
        extra = future._log_extra  # noqa: SLF001 - a ForkFuture, in its own module
        logger.exception("progress callback %r of %r raised", fn, future, extra=extra)
