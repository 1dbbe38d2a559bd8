"""One forked child as the supervisor sees it, and what its end means for its future.

The supervisor keeps a :class:`Child` from fork until reap. Once reaped, :func:`settle`
turns what the child left behind (an outcome frame, a stop the supervisor made, an
exit status) into its future's result or exception.

A timeout is judged by when the child finished (the moment its DONE frame
carries), never by when the supervisor read it: an outcome finished by the
deadline counts, however late the supervisor was; one finished after it does not.
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
from typing import TYPE_CHECKING, Any

import attrs

from forkpool import _kill_marks, _wire
from forkpool._errors import ChildDiedError, TaskTimeoutError, abrupt_end
from forkpool._tree import ProcessTree

if TYPE_CHECKING:
    import mmap

    from forkpool._future import ForkFuture
    from forkpool._options import ResolvedOptions


class StopReason(enum.Enum):
    """Why the supervisor stopped a child before it finished by itself (who did it)."""

    TIMEOUT = "its timeout"
    CANCELLED = "cancel()"
    TERMINATED = "terminate_workers()"
    KILLED = "kill_workers()"
    INTERRUPTED = "a KeyboardInterrupt in the parent"
    WAIT_ENDED = "an exception that ended the wait for its result"
    ABANDONED = "its executor, garbage-collected without shutdown()"
    HOOK_FAILED = "parent_post_fork raising"
    CORRUPT = "forkpool, for a corrupt result stream"


@attrs.define(eq=False)
class Child:
    """A forked child, from fork until it is reaped."""

    pid: int
    future: ForkFuture[Any]
    options: ResolvedOptions
    task_id: str | None
    read_fd: int | None
    write_fd: int | None
    pidfd: int | None
    started: float
    deadline: float | None
    reader: _wire.FrameReader = attrs.field(factory=_wire.FrameReader)
    buffers: list[bytearray | mmap.mmap] = attrs.field(factory=list)
    outcome: _wire.Frame | None = None
    # When the task finished (time.monotonic(), from its DONE frame), if it has.
    finished_at: float | None = None
    # Its descendants outside its process group, once it has been stopped.
    tree: ProcessTree | None = None
    exited: bool = False
    stop_reason: StopReason | None = None
    stop_error: BaseException | None = None
    outcome_before_stop: bool = False
    kill_at: float | None = None
    # Its resident set before its task ran (see ResourceUsage.own_peak_bytes).
    resident_at_start: int | None = None
    # The task's callable, as module.qualname.
    name: str = ""

    def log_extra(self) -> dict[str, object]:
        """What each log line about this task carries in ``extra``, for structured logs."""
        return {"task_id": self.task_id, "pid": self.pid, "callable": self.name}

    @property
    def finished_in_time(self) -> bool:
        """The task finished, and no later than its deadline (if it has one)."""
        finished_at = self.finished_at
        return finished_at is not None and (self.deadline is None or finished_at <= self.deadline)

    def signal_tree(self, signum: int) -> None:
        """Signal the child, its group and its descendants elsewhere (see ``_tree``).

        Only while it is unreaped: until then its pid and group id are its own.
        Everything is stopped first and continued after a catchable signal, so the
        walk for descendants misses nothing forked meanwhile.
        """
        # The leader is signalled directly too, in case the task left its group.
        self._signal_group(signal.SIGSTOP)
        tree = self.tree
        try:
            if tree is None:
                tree = self.tree = ProcessTree(self.pid)
            tree.freeze()
            self._signal_group(signum)
            tree.send(signum)
        finally:
            if signum != signal.SIGKILL:
                self._signal_group(signal.SIGCONT)
                if tree is not None:
                    tree.send(signal.SIGCONT)

    def _signal_group(self, signum: int) -> None:
        self.signal_leader(signum)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def signal_leader(self, signum: int) -> None:
        """Send ``signum`` to the child itself (only while it is unreaped)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            else:
                os.kill(self.pid, signum)

    def __repr__(self) -> str:
        state = "exited" if self.exited else "running"
        if self.stop_reason is not None:
            state += f", stopping because {self.stop_reason.value}"
        return f"<forkpool child pid={self.pid} {state}>"


def settle(
    child: Child, exitcode: int | None, signum: int | None, *, unknown_because: str = ""
) -> None:
    """Resolve the future of a reaped child: its outcome, or why it has none.

    ``unknown_because``: why the exit status is unknown, if it is and the cause is
    not the usual one (something else in this process reaped the child).
    """
    future, reason, outcome = child.future, child.stop_reason, child.outcome
    if reason is StopReason.CANCELLED:
        return
    if reason is StopReason.HOOK_FAILED and child.stop_error is not None:
        future._resolve(exception=child.stop_error)  # noqa: SLF001
        return
    if outcome is not None and _outcome_stands(child, exited_cleanly=exitcode == 0):
        _resolve_outcome(future, outcome, child.buffers)
        return
    if reason is StopReason.TIMEOUT:
        timeout = child.options.timeout or 0.0
        future._resolve(exception=TaskTimeoutError(child.pid, timeout))  # noqa: SLF001
        return
    stopped_by = _stopped_by(child, signum)
    detail = ""
    if stopped_by:
        pass  # who stopped it says it all
    elif child.reader.mid_frame or child.buffers:
        detail = "its result was cut short"
    elif exitcode is None and signum is None:
        detail = unknown_because or "something else in this process reaped it (is SIGCHLD ignored?)"
    error = ChildDiedError(
        child.pid, exitcode, signum, detail, future.rusage, stopped_by=stopped_by
    )
    error.__cause__ = abrupt_end(child.pid, exitcode, signum)
    future._resolve(exception=error)  # noqa: SLF001


def _stopped_by(child: Child, signum: int | None) -> str:
    """Who stopped the child, if forkpool knows: it did, or ``kill_all`` left word."""
    reason = child.stop_reason
    if reason is StopReason.CORRUPT and child.stop_error is not None:
        return f"{reason.value} ({child.stop_error})"
    if reason is StopReason.WAIT_ENDED and child.stop_error is not None:
        return f"{reason.value} ({type(child.stop_error).__name__})"
    if reason is not None:
        return reason.value
    if signum == signal.SIGKILL and child.task_id is not None:
        return _kill_marks.take(child.task_id)
    return ""


def _outcome_stands(child: Child, *, exited_cleanly: bool) -> bool:
    """The child's outcome, which arrived whole, is its future's result.

    A child that exited 0 finished its task before any stop reached it (or chose to
    finish, handling the signal): what it sent stands, even if the supervisor had
    not read it yet when the stop was asked for.
    """
    reason = child.stop_reason
    if reason is None:
        return True
    if reason is StopReason.TIMEOUT:
        return child.finished_in_time
    return child.outcome_before_stop or (exited_cleanly and reason is not StopReason.CORRUPT)


def _resolve_outcome(
    future: ForkFuture[Any], outcome: _wire.Frame, buffers: list[bytearray | mmap.mmap]
) -> None:
    result: object = None
    error: BaseException | None = None
    try:
        if outcome.kind is _wire.Kind.RESULT:
            result = _wire.decode_result(outcome.payload, buffers)
            buffers.clear()
        else:
            error = _wire.decode_exception(outcome.payload)  # type: ignore[arg-type]
    except BaseException as exc:  # noqa: BLE001 - a bad payload fails only its own task
        error = exc
    future._resolve(result, error)  # noqa: SLF001
