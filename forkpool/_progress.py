"""Progress from a running child to its future: ``forkpool.report_progress(value)``.

In a child, reports travel on the same pipe as the result, as frames the parent
reads as they arrive; a lock keeps frames from threads of the task whole. Only the
process forkpool forked writes on the pipe: a process the task forks inherits the
channel, but its writes could tear the child's frames, and its outcome is not the
task's. Outside a forkpool child, and in such a process, the call does nothing but
warn.
"""

from __future__ import annotations

import os
import threading
import warnings

import attrs

from forkpool._wire import Kind, Outcome, dumps, send_outcome, write_frame


@attrs.define
class Channel:
    """The child's end of the result pipe, recoverable if the task loses it.

    A task may close or ``dup2`` over any descriptor, the pipe's included. Before
    each write the descriptor is checked against the pipe's identity; if it no
    longer is the pipe, the child re-opens the pipe through the parent's read end
    (``/proc/<parent>/fd/<n>``; Linux opens a pipe there in the mode asked for).
    """

    fd: int
    parent_pid: int
    parent_read_fd: int
    identity: tuple[int, int]
    # Keeps frames from threads of the task whole. Made with the channel, in the
    # parent, which never takes it.
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    # The process forkpool forked, the only one that may write (set in the child).
    owner_pid: int = 0

    def send(self, kind: Kind, payload: bytes) -> None:
        with self.lock:
            write_frame(self._pipe(), kind, payload)

    def send_outcome(self, outcome: Outcome, finished_at: float, resident_at_start: int) -> None:
        with self.lock:
            send_outcome(self._pipe(), outcome, finished_at, resident_at_start)

    def _pipe(self) -> int:
        if _identity(self.fd) == self.identity:
            return self.fd
        reopened = os.open(
            f"/proc/{self.parent_pid}/fd/{self.parent_read_fd}", os.O_WRONLY | os.O_CLOEXEC
        )
        if _identity(reopened) != self.identity:
            os.close(reopened)
            msg = "the result pipe was lost and cannot be re-opened"
            raise OSError(msg)
        self.fd = reopened
        return reopened


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        stat = os.fstat(fd)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class _ChildState:
    """The reporting channel of this process, set only inside a forkpool child."""

    channel: Channel | None = None


def make_channel(fd: int, parent_pid: int, parent_read_fd: int) -> Channel:
    """In the parent, before fork: the channel a child will report through on ``fd``."""
    identity = _identity(fd)
    if identity is None:
        msg = f"the result pipe (fd {fd}) is not open"
        raise OSError(msg)
    return Channel(fd, parent_pid, parent_read_fd, identity)


def install_channel(channel: Channel) -> None:
    """In a new child: route report_progress() and the outcome through ``channel``."""
    channel.owner_pid = os.getpid()
    _ChildState.channel = channel


def in_forked_child(channel: Channel) -> bool:
    """This is the process forkpool forked, not one the task forked from it."""
    return channel.owner_pid == os.getpid()


def send_to_parent(kind: Kind, payload: bytes) -> bool:
    """In a forkpool child, send one frame to the parent; False anywhere else."""
    channel = _ChildState.channel
    if channel is None or not in_forked_child(channel):
        return False
    channel.send(kind, payload)
    return True


def report_progress(value: object) -> None:
    """Send ``value`` to the parent, where the task's future receives it.

    Call it from inside a task (any thread of it). The value is pickled like a
    result; the parent reads it as it arrives and never blocks on it. Outside a
    forkpool child this does nothing and warns; so it does in a process the task
    forked (only the task's own process reports).

    Raises:
        ResultNotPicklableError: The value cannot be pickled.
    """
    channel = _ChildState.channel
    if channel is None or not in_forked_child(channel):
        where = "outside a forkpool task" if channel is None else "in a process a task forked"
        warnings.warn(
            f"forkpool.report_progress() called {where}; ignored",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    try:
        payload = dumps(value)
    except BaseException as exc:
        from forkpool._errors import ResultNotPicklableError  # noqa: PLC0415 - rare path

        msg = f"progress value of type {type(value).__qualname__} could not be pickled: {exc}"
        raise ResultNotPicklableError(msg) from exc
    channel.send(Kind.PROGRESS, payload)
