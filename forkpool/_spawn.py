"""How a task's child comes to exist and is reaped: the supervisor's one seam.

Two implementations:

- :class:`ForkHere` forks the executor's own process, from the supervisor thread.
  The child inherits everything, unpicklable state included: forkpool's default.
- A mold's spawner (``forkpool._mold``) asks a small single-threaded template
  process to fork the child; the task travels to it pickled.

Either way the supervisor keeps one rule: a child is reaped only when the
supervisor asks for it, so until then its pid, and its process group id, are the
child's own and signalling them can never reach a stranger.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Protocol

import attrs

from forkpool import _fork, _procfs

if TYPE_CHECKING:
    import resource
    from collections.abc import Container, Iterable


@attrs.frozen
class Spawned:
    """A child just started: its pid, and its resident set before its task ran.

    The second is each task's baseline for ``ResourceUsage.own_peak_bytes``; None
    if it could not be read.
    """

    pid: int
    resident_at_start: int | None


@attrs.frozen
class Reaped:
    """What reaping a child told: its wait status (-1: unknown) and resource usage."""

    status: int
    rusage: resource.struct_rusage | None
    # Why the status is unknown, when it is; "" for the usual cause (see settle()).
    unknown_because: str = ""


class Spawner(Protocol):
    """How the supervisor starts, watches and reaps children (one per supervisor)."""

    def adopt_thread(self) -> None:
        """Called once, first, in the supervisor thread."""

    def spawn(
        self,
        task: _fork.ChildTask,
        read_fd: int,
        write_fd: int,
        close_in_child: Iterable[int],
        siblings: Container[int],
    ) -> Spawned:
        """Start a child that runs ``task`` and reports on ``write_fd``.

        Raises:
            OSError: it could not be started (the task fails with it).
        """
        ...

    def running(self, pid: int) -> bool:
        """The child has not exited yet."""
        ...

    def unreaped(self, pid: int) -> bool:
        """The child still holds its pid and process group id (see the module docstring)."""
        ...

    def reap(self, pid: int) -> Reaped:
        """Reap the child, which has exited (or been SIGKILLed): how it ended."""
        ...

    def close(self) -> None:
        """The supervisor is done with it."""
        ...


@attrs.define
class ForkHere:
    """Fork the executor's process: the child inherits everything (see ``_fork``)."""

    _forker: _fork.Forker = attrs.field(factory=_fork.Forker)

    def adopt_thread(self) -> None:
        """Block signals in the supervisor thread for good (see ``Forker``)."""
        self._forker.adopt_thread()

    def spawn(
        self,
        task: _fork.ChildTask,
        read_fd: int,
        write_fd: int,
        close_in_child: Iterable[int],
        siblings: Container[int],
    ) -> Spawned:
        """Fork a child of this process."""
        pid = self._forker.fork(task, read_fd, write_fd, close_in_child, siblings)
        # Read first: the child is still settling in, its task not begun.
        resident = _procfs.resident_bytes(pid)
        # Both sides call setpgid so the group exists before either relies on it; the
        # child may have exec'd or died already, having set its own group first.
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        return Spawned(pid, resident)

    def running(self, pid: int) -> bool:
        """Our child has not exited (False once it is a zombie or reaped)."""
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return False  # reaped behind our back (SIGCHLD ignored): it has certainly exited

    def unreaped(self, pid: int) -> bool:
        """Our child still holds its pid: nothing else (SIGCHLD ignored, a stray wait) reaped it."""
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    def reap(self, pid: int) -> Reaped:
        """wait4() the child."""
        try:
            _, status, rusage = os.wait4(pid, 0)
        except ChildProcessError:
            # Reaped behind our back: SIGCHLD set to SIG_IGN, or a wait() elsewhere in
            # the program. The outcome frame, if any, is still good.
            return Reaped(-1, None)
        return Reaped(status, rusage)

    def close(self) -> None:
        """Nothing to release."""
