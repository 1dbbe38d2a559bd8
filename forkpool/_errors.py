"""The exceptions forkpool raises, all importable from ``forkpool``."""

from __future__ import annotations

import functools
import os
import select
import signal as _signal
import sys
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forkpool._usage import ResourceUsage

# Signals whose bare name tells an operator little; the hint says what usually sends them.
_SIGNAL_HINTS: dict[int, str] = {
    _signal.SIGKILL: "possibly the OOM killer",
    _signal.SIGSEGV: "segmentation fault",
    _signal.SIGBUS: "bus error",
    _signal.SIGABRT: "aborted",
    _signal.SIGILL: "illegal instruction",
    _signal.SIGFPE: "floating-point exception",
}


def signal_name(signum: int) -> str:
    """Return ``SIGKILL`` for 9, and a stable fallback for signals Python does not name."""
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class ForkPoolError(Exception):
    """Base class of every error forkpool raises itself."""


class TaskTimeoutError(ForkPoolError, TimeoutError):
    """The task outlived its timeout and its process group was stopped.

    Attributes:
        pid: The child that ran the task.
        timeout: The timeout, in seconds, that the task exceeded.
    """

    def __init__(self, pid: int, timeout: float) -> None:
        # OSError (TimeoutError's base) reads a 2-tuple of args as (errno, strerror);
        # pass exactly one argument so str() is the message.
        super().__init__(
            f"task in child {pid} exceeded its timeout of {timeout:g}s and was stopped"
        )
        self.pid = pid
        self.timeout = timeout

    def __reduce__(self) -> tuple[type[TaskTimeoutError], tuple[int, float]]:
        return (type(self), (self.pid, self.timeout))


class ChildDiedError(ForkPoolError, BrokenProcessPool):
    """The child exited without sending a result (``os._exit``, a signal, the OOM killer).

    It is also a :class:`concurrent.futures.process.BrokenProcessPool`, so code written
    for ProcessPoolExecutor still catches it; unlike there, only this one task failed
    and the executor keeps working.

    Attributes:
        pid: The child's process id.
        exitcode: Its exit status when it exited normally, else None.
        signal: The number of the signal that killed it, else None.
        detail: What else is known of its end, if anything.
        stopped_by: Who stopped it, when forkpool knows (``"kill_workers()"``,
            ``"forkpool.kill_all() in process 4242"``); else empty.
        rusage: What the child used (its own and total peak memory, CPU, wall
            time), when known.
    """

    def __init__(
        self,
        pid: int,
        exitcode: int | None,
        signal: int | None,
        detail: str = "",
        rusage: ResourceUsage | None = None,
        *,
        stopped_by: str = "",
    ) -> None:
        super().__init__(
            _describe_death(pid, exitcode, signal, detail, rusage, stopped_by=stopped_by)
        )
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal
        self.detail = detail
        self.stopped_by = stopped_by
        self.rusage = rusage

    def __reduce__(self) -> tuple[object, ...]:
        return (
            functools.partial(type(self), stopped_by=self.stopped_by),
            (self.pid, self.exitcode, self.signal, self.detail, self.rusage),
        )


def _describe_death(
    pid: int,
    exitcode: int | None,
    signum: int | None,
    detail: str,
    rusage: ResourceUsage | None,
    *,
    stopped_by: str,
) -> str:
    if stopped_by:
        detail = f"stopped by {stopped_by}" + (f"; {detail}" if detail else "")
    if signum is not None:
        name = signal_name(signum)
        # Guesses at the sender are for deaths nobody owned up to.
        hint = None if stopped_by else _SIGNAL_HINTS.get(signum)
        message = f"child {pid} was killed by {name}" + (f" ({hint})" if hint else "")
        if rusage is not None:
            message += f" at {rusage.describe_memory()}"
    elif exitcode is not None:
        message = f"child {pid} exited with code {exitcode} without sending a result"
    else:
        message = f"child {pid} ended without sending a result"
    return f"{message}: {detail}" if detail else message


class ResultNotPicklableError(ForkPoolError):
    """The task's return value could not be sent back to the parent."""


class TaskNotPicklableError(ForkPoolError):
    """A task for a mold could not be pickled.

    What did not pickle may be its callable, its arguments, or the executor's
    ``initializer``, ``initargs`` or ``child_post_fork``.
    """


class MoldError(ForkPoolError):
    """A mold could not be started, is closed, or died; the message names it."""


class RemoteTaskError(ForkPoolError):
    """Stands in for a task exception that could not be sent back as itself.

    Raised when the task's exception (and even a plain instance of its class) fails
    to pickle or to unpickle. It keeps what an operator needs.

    Attributes:
        type_name: The qualified name of the original exception's class.
        message: ``str()`` of the original exception.
        traceback_text: The child's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[type[RemoteTaskError], tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.traceback_text))


class RemoteTraceback(Exception):  # noqa: N818 - named after CPython's _RemoteTraceback
    """What happened in the child, as the ``__cause__`` of the error the parent raises.

    The child's formatted traceback for a task's exception; for a child that died
    without a result, ``Process <pid> terminated abruptly with exit code <n>``, as
    ProcessPoolExecutor says from Python 3.15 on (``n`` is ``-signum`` for a signal).

    Attributes:
        traceback_text: The text.
        tb: The same text, under the name CPython's ``_RemoteTraceback`` gives it.
    """

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    @property
    def tb(self) -> str:
        """``traceback_text``, for code written against ProcessPoolExecutor."""
        return self.traceback_text

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback_text}"""'


def abrupt_end(pid: int, exitcode: int | None, signum: int | None) -> RemoteTraceback | None:
    """The cause ProcessPoolExecutor gives a dead worker's error (3.15), if it applies.

    It names a nonzero exit: a code, or ``-signum`` as multiprocessing writes a
    death by signal.
    """
    code = -signum if signum is not None else exitcode
    if not code:
        return None
    return RemoteTraceback(f"Process {pid} terminated abruptly with exit code {code}")


def platform_error(
    platform: str = sys.platform,
    *,
    has_fork: bool = hasattr(os, "fork"),
    has_epoll: bool = hasattr(select, "epoll"),
) -> ForkPoolError | None:
    """The error for a platform forkpool cannot run on; None on Linux.

    forkpool is Linux's: besides ``fork()`` it waits in ``epoll``, signals through
    pidfds and reads ``/proc`` to tell its children from strangers. The arguments
    default to this platform's facts.
    """
    missing = [
        name
        for name, present in (
            ("os.fork()", has_fork),
            ("select.epoll()", has_epoll),
            ("Linux's /proc", platform.startswith("linux")),
        )
        if not present
    ]
    if not missing:
        return None
    return ForkPoolError(
        f"forkpool runs on Linux only: it needs {', '.join(missing)}, which "
        f"{platform!r} does not provide; use concurrent.futures.ProcessPoolExecutor there"
    )
