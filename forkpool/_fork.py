"""Forking one child for one task, and everything the child does until ``os._exit``.

Some facts about fork, each of which shaped this module:

* Only the forking thread exists in the child. Every lock another thread held at
  that instant stays held forever in the child. The logging module re-initializes
  its own locks after fork, but a buffered stream's internal lock is not, so a
  thread printing while we fork would leave ``sys.stdout`` dead in the child. We
  therefore take logging's module lock and every handler's lock across the fork
  (module lock first, the order logging itself uses), and the child replaces the
  standard streams with fresh objects on the same descriptors. The waits are
  short: under heavy logging a handler's lock is rarely free, and the GIL convoy
  makes waiting for it cost whole switch intervals. A handler whose lock we did not
  get is given a fresh stream object in the child instead, which is as safe.
* Buffered output is copied into the child. The parent flushes stdout/stderr
  right before forking, and the child drops whatever a racing thread buffered in
  between, so nothing is printed twice. A flush can block forever (a pipe nobody
  reads, with another thread stuck writing to it and holding the stream's lock),
  so a stream the child replaces -- whose copied buffer it drops anyway -- is only
  flushed when its descriptor has room for all of it; the flush then only keeps
  the parent's and the child's output in order.
* A child must never return into the parent's stack or run its atexit handlers:
  every path out of :func:`_run_child` is ``os._exit``.
* ``PR_SET_PDEATHSIG`` fires when the *thread* that forked exits, not the process.
  Only the supervisor thread forks, and it outlives all its children. The parent may
  die between fork and prctl, so the child re-checks ``getppid()`` afterwards.
* Signal handlers are inherited. A web server's graceful-shutdown handler must not
  run in a task, so the child resets every Python-level handler (and SIGINT, SIGTERM,
  SIGCHLD) to the default. The supervisor thread keeps every catchable signal
  blocked for its whole life (:meth:`Forker.adopt_thread`), so a child starts with
  them blocked and unblocks them only after that reset: a SIGTERM sent early can
  never reach a parent's handler in the child. (Blocking them in our threads also
  makes the kernel deliver Ctrl-C to the main thread, where Python needs it: on
  3.13 a SIGINT taken by another thread does not wake a main thread blocked on a
  lock.) An inherited ``signal.set_wakeup_fd`` (asyncio sets one) is cleared too.
* Each child leads its own process group, so one ``killpg`` reaches the grandchildren
  it starts, and a Ctrl-C at the terminal reaches the parent only.
* Python 3.12+ warns when a multi-threaded process forks. Forking from a dedicated
  thread, with the precautions above, is this module's purpose: ``_quiet_fork``
  silences that warning for our fork call alone, in a way other threads' use of
  ``warnings.catch_warnings`` cannot race.
"""

from __future__ import annotations

import _signal  # the C layer of `signal`: same functions, ints instead of enums
import contextlib
import fcntl
import gc
import io
import logging
import os
import resource
import select
import signal
import stat
import struct
import sys
import termios
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import attrs

from forkpool import _linux, _procfs, _quiet_fork
from forkpool._options import MAX_MEMORY_LIMIT
from forkpool._progress import Channel, in_forked_child, install_channel, make_channel
from forkpool._wire import Kind, Outcome, encode_exception, encode_result

if TYPE_CHECKING:
    from collections.abc import Callable, Container, Iterable

# How long to wait for logging's module lock (rarely contended), and in all for
# handler locks (often contended; a busy handler gets a fresh stream instead).
_MODULE_LOCK_WAIT = 0.5
_HANDLER_LOCKS_WAIT = 0.005

# Exit status of a child that could not report its outcome (EX_SOFTWARE).
EXIT_UNREPORTED = 70
# Exit status of a child whose parent died before it could start the task.
EXIT_ORPHANED = 71

_ALWAYS_RESET: frozenset[int] = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGCHLD})
_CATCHABLE: frozenset[int] = frozenset(
    int(signum)
    for signum in signal.valid_signals()
    if signum not in {signal.SIGKILL, signal.SIGSTOP}
)


@attrs.define
class ChildTask:
    """What a child runs: hooks, initializer, then the task itself."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    initializer: Callable[..., object] | None = None
    initargs: tuple[Any, ...] = ()
    child_post_fork: Callable[..., object] | None = None
    # Run first in the child, before child_post_fork (forkpool.otel's context).
    prelude: Callable[[], object] | None = None
    task_id: str | None = None
    memory_limit: int | None = None
    # With close_fds: the descriptors to keep besides stdio and the result pipe.
    keep_fds: tuple[int, ...] | None = None
    # For a mold's child: (fn, args, kwargs, child_post_fork, initializer,
    # initargs), cloudpickled at submit, and the descriptors the task keeps.
    pickled: bytes | None = None
    pass_fds: tuple[int, ...] = ()


@attrs.define
class Forker:
    """Forks children; keeps what can be prepared once instead of in every child.

    The spare standard streams are built in the parent and never used there, so
    each child gets fresh objects (free locks) without allocating them itself:
    every page a child touches is a copy-on-write fault, and faults are most of
    what a child costs beyond fork itself.
    """

    _spares: _SpareStdio | None = None
    _thread_mask: tuple[int, ...] | None = None
    _parent_pid: int = 0
    # Set by stay_alone(): the signals every child resets, fixed for good.
    _alone_signals: frozenset[int] | None = None

    def adopt_thread(self) -> None:
        """Block catchable signals in the calling (forking) thread for good.

        Remembers the mask the thread had, which each child restores once it has
        reset the signal handlers.
        """
        self._thread_mask = tuple(block_signals_in_this_thread())
        self._parent_pid = os.getpid()

    def stay_alone(self) -> bool:
        """Fork from now on without the precautions against other threads, if there are none.

        For a mold, which has one thread for good and whose signal handlers no
        longer change: with no other thread, no lock (logging's, a stream's, the
        warnings filters') can be held by anyone else at a fork, so none is taken or
        replaced, and the signals to reset are decided once. Each of those steps
        touches dozens of pages, and in a process that forks all the time each page
        it touches is a copy-on-write fault. Standard output is flushed now; the
        caller prints nothing after. Returns whether it took effect: not in a
        process with more than one thread, nor while stdout or stderr is a pipe too
        full to flush into without blocking (then every fork keeps the precautions,
        which give children fresh streams instead).
        """
        if self._thread_mask is None:
            msg = "Forker.adopt_thread() must be called in the forking thread first"
            raise RuntimeError(msg)
        if _linux.thread_count() != 1 or not (_room_to_flush(1) and _room_to_flush(2)):
            return False
        _flush_stdio()
        self._alone_signals = signals_to_reset()
        return True

    def fork(
        self,
        task: ChildTask,
        read_fd: int,
        write_fd: int,
        close_in_child: Iterable[int],
        siblings: Container[int] = (),
        *,
        pipe_owner: int | None = None,
    ) -> int:
        """Fork a child that runs ``task`` and reports on ``write_fd``; return its pid.

        ``read_fd`` is the other end of the same pipe, held by ``pipe_owner`` (this
        process by default; a mold forks for an executor's process), through which
        the child can re-open the pipe if the task loses its own end. ``siblings``:
        the pids of the children already running (see ``_quiet_fork``).

        Everything the child needs is built here, before fork: what the parent
        allocates lands on pages it is writing anyway, while each page a child
        touches is a copy-on-write fault of its own.

        Must be called from the supervisor thread (see the PDEATHSIG fact above).

        Raises:
            OSError: fork() failed (EAGAIN when out of processes, ENOMEM).
        """
        assignment = self.assignment(task, read_fd, write_fd, pipe_owner)
        return self._fork(assignment, close_in_child, siblings)

    def fork_spare(
        self,
        wait_for_task: Callable[[], Assignment | None],
        close_in_child: Iterable[int],
        siblings: Container[int] = (),
    ) -> int:
        """Fork a child that settles in, then waits for its task; return its pid.

        In the child, ``wait_for_task()`` blocks until the task comes (see
        :meth:`assignment`); None makes the child exit quietly. The fork and
        everything a child does before it knows its task are then off the task's
        path. Same rules as :meth:`fork`.

        Raises:
            OSError: fork() failed.
        """
        return self._fork(wait_for_task, close_in_child, siblings)

    def assignment(
        self, task: ChildTask, read_fd: int, write_fd: int, pipe_owner: int | None = None
    ) -> Assignment:
        """What a child needs to run ``task``: see :meth:`fork` for the arguments."""
        channel = make_channel(
            write_fd, self._parent_pid if pipe_owner is None else pipe_owner, read_fd
        )
        name = None
        if task.task_id is not None:
            name = _linux.comm_name(_procfs.comm_marker(task.task_id))
        return Assignment(task, channel, name)

    def _fork(
        self,
        assignment: Assignment | Callable[[], Assignment | None],
        close_in_child: Iterable[int],
        siblings: Container[int],
    ) -> int:
        if self._thread_mask is None:
            msg = "Forker.adopt_thread() must be called in the forking thread first"
            raise RuntimeError(msg)
        if self._alone_signals is not None:
            return self._fork_alone(assignment, close_in_child)
        spares = self._spare_stdio()
        _flush_before_fork(spares)
        # Warnings' lock before logging's (see _quiet_fork).
        filters_held = _quiet_fork.hold_filters()
        try:
            locks = _LoggingLocks.acquire()
            try:
                setup = _ChildSetup(
                    parent_pid=self._parent_pid,
                    signals_to_reset=signals_to_reset(),
                    signal_mask=self._thread_mask,
                    stream_swaps=spares.swaps(locks.handlers),
                    busy_handlers=locks.busy,
                    close_fds=tuple(close_in_child),
                )
                pid = _quiet_fork.fork(siblings)
                if pid == 0:
                    _quiet_fork.release_filters(filters_held)
                    _run_child(setup, assignment)
            finally:
                # Only the parent gets here; the child leaves through os._exit and
                # logging re-initializes these locks in it.
                locks.release()
        finally:
            _quiet_fork.release_filters(filters_held)
        return pid

    def _fork_alone(
        self,
        assignment: Assignment | Callable[[], Assignment | None],
        close_in_child: Iterable[int],
    ) -> int:
        """Fork in a process with one thread (see :meth:`stay_alone`)."""
        setup = _ChildSetup(
            parent_pid=self._parent_pid,
            signals_to_reset=self._alone_signals or frozenset(),
            signal_mask=self._thread_mask or (),
            stream_swaps=(),
            busy_handlers=[],
            close_fds=tuple(close_in_child),
        )
        pid = os.fork()  # one thread: no warning to silence
        if pid == 0:
            _run_child(setup, assignment)
        return pid

    def _spare_stdio(self) -> _SpareStdio:
        spares = self._spares
        if spares is None or not spares.matches_current():
            spares = self._spares = _SpareStdio.for_current()
        return spares


@attrs.frozen
class _SpareStdio:
    """Unused replacements for sys.stdout/sys.stderr, and the objects they replace."""

    originals: tuple[object, object]
    settings: tuple[object, object]
    replacements: tuple[io.TextIOWrapper | None, io.TextIOWrapper | None]

    @classmethod
    def for_current(cls) -> _SpareStdio:
        originals = (sys.stdout, sys.stderr)
        return cls(
            originals=originals,
            settings=(_settings(sys.stdout), _settings(sys.stderr)),
            replacements=(_spare_for(sys.stdout, 1), _spare_for(sys.stderr, 2)),
        )

    def matches_current(self) -> bool:
        return (
            self.originals[0] is sys.stdout
            and self.originals[1] is sys.stderr
            and self.settings == (_settings(sys.stdout), _settings(sys.stderr))
        )

    def swaps(self, handlers: list[logging.Handler]) -> tuple[_StreamSwap, ...]:
        """The replacements a child makes: in ``sys`` and in logging handlers."""
        swaps: list[_StreamSwap] = []
        for name, old, new in zip(
            ("stdout", "stderr"), self.originals, self.replacements, strict=True
        ):
            if new is None:
                continue
            also_dunder = getattr(sys, f"__{name}__", None) is old
            # Handlers holding the stream itself; logging's last-resort handler
            # reads sys.stderr through a property and follows by itself.
            repointed = tuple(
                handler
                for handler in handlers
                if isinstance(handler, logging.StreamHandler) and vars(handler).get("stream") is old
            )
            swaps.append(_StreamSwap(name, new, also_dunder, repointed))
        return tuple(swaps)


@attrs.frozen
class _StreamSwap:
    """In the child: ``sys.<name>`` (and maybe ``sys.__<name>__``) becomes ``new``."""

    name: str
    new: io.TextIOWrapper
    also_dunder: bool
    handlers: tuple[logging.StreamHandler[Any], ...]

    def apply(self) -> None:
        setattr(sys, self.name, self.new)
        if self.also_dunder:
            setattr(sys, f"__{self.name}__", self.new)
        for handler in self.handlers:
            handler.stream = self.new


def _settings(stream: object) -> object:
    return tuple(
        getattr(stream, attr, None)
        for attr in ("encoding", "errors", "line_buffering", "write_through")
    )


def _spare_for(stream: object, fd: int) -> io.TextIOWrapper | None:
    # Streams that are not plain text files on fd 1/2 (a test runner's capture,
    # say) are left alone.
    if type(stream) is not io.TextIOWrapper:
        return None
    try:
        if stream.fileno() != fd:
            return None
        return _fresh_text_stream(stream, fd)
    except (OSError, ValueError):
        return None


def _fresh_text_stream(like: io.TextIOWrapper, fd: int) -> io.TextIOWrapper:
    """A new, never-locked text stream on ``fd`` with the settings of ``like``."""
    raw = io.FileIO(fd, "w", closefd=False)
    # Under ``python -u`` / PYTHONUNBUFFERED the original has no buffer layer; the
    # copy must not add one, or a task's output would wait for the task's exit.
    binary = raw if isinstance(like.buffer, io.RawIOBase) else io.BufferedWriter(raw)
    return io.TextIOWrapper(
        binary,
        encoding=like.encoding,
        errors=like.errors,
        line_buffering=like.line_buffering,
        write_through=like.write_through,
    )


@attrs.frozen
class Assignment:
    """What makes a child a task's: the task, its result channel, its kernel name."""

    task: ChildTask
    channel: Channel
    name: bytes | None


@attrs.define
class _ChildSetup:
    """What the parent prepared, before fork, for the child to apply after it."""

    parent_pid: int
    signals_to_reset: frozenset[int]
    signal_mask: tuple[int, ...]
    stream_swaps: tuple[_StreamSwap, ...]
    busy_handlers: list[logging.Handler]
    close_fds: tuple[int, ...]


def _run_child(
    setup: _ChildSetup, assignment: Assignment | Callable[[], Assignment | None]
) -> NoReturn:
    status = EXIT_UNREPORTED
    try:
        _settle_in(setup)
        # A spare's task comes now, or never (None).
        job = assignment if isinstance(assignment, Assignment) else assignment()
        if job is not None:
            _take_on(job)
            _run_task(job.task, job.channel)
        status = 0
    except BaseException:  # noqa: BLE001, S110 - nothing may escape a child; the parent sees the status
        pass
    finally:
        _flush_stdio()
        os._exit(status)


def _run_task(task: ChildTask, channel: Channel) -> None:
    """Hooks, initializer, the task; its outcome sent (raises only if that fails)."""
    resident = None
    try:
        if task.memory_limit is not None:
            _cap_memory(task.memory_limit)
        if task.prelude is not None:
            task.prelude()
        if task.child_post_fork is not None:
            task.child_post_fork(task.fn, task.args, task.kwargs)
        if task.initializer is not None:
            task.initializer(*task.initargs)
        # The task's own memory is measured from here (see ResourceUsage): read now,
        # when the child's code pages are faulted back in, not at fork, when they are not.
        resident = _procfs.resident_bytes(os.getpid())
        value = task.fn(*task.args, **task.kwargs)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and friends are outcomes too
        if not in_forked_child(channel):
            _leave_as_helper(exc)
        outcome = Outcome(Kind.RAISED, encode_exception(exc))
    else:
        if not in_forked_child(channel):
            _leave_as_helper(None)
        outcome = encode_result(value)
        del value
    channel.send_outcome(outcome, time.monotonic(), -1 if resident is None else resident)


def _leave_as_helper(error: BaseException | None) -> NoReturn:
    """Exit a process the task forked, which came back out of the task's frames.

    It leaves as a Python program would, and reports nothing: the outcome is the
    forked child's alone.
    """
    status = 0
    if isinstance(error, SystemExit):
        code = error.code
        if isinstance(code, int):
            status = code & 0xFF
        elif code is not None:
            sys.stderr.write(f"{code}\n")
            status = 1
    elif error is not None:
        traceback.print_exception(type(error), error, error.__traceback__)
        status = 1
    _flush_stdio()
    os._exit(status)


def _settle_in(setup: _ChildSetup) -> None:
    """In the child, first: detach from the parent's process state."""
    _become_independent(setup)
    for fd in setup.close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    for swap in setup.stream_swaps:
        swap.apply()
    if setup.busy_handlers:
        _give_fresh_streams(setup.busy_handlers)


def _take_on(assignment: Assignment) -> None:
    """In the child, once its task is known: become that task's process."""
    install_channel(assignment.channel)
    task = assignment.task
    if task.task_id is not None and assignment.name is not None:
        _mark(task.task_id, assignment.name)
    if task.keep_fds is not None:
        neutralize_inherited_fds({0, 1, 2, assignment.channel.fd, *task.keep_fds})


def neutralize_inherited_fds(keep: set[int]) -> None:
    """Point every inherited descriptor not in ``keep`` at /dev/null (close_fds).

    Not closed: inherited Python objects (a socket, a file) may still hold the
    number and close it when collected, which would close whatever the task had
    opened under the same number by then. Pointing it at /dev/null ends what it
    was -- a client sees its connection's EOF, a listening port is free once the
    server lets go -- and keeps the number taken.
    """
    keep.update(_logging_fds())
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        # Names, not Path objects: every object made here is a write, and so a
        # copy-on-write fault, in a page shared with the parent.
        for name in os.listdir("/proc/self/fd"):  # noqa: PTH208 - see above
            fd = int(name)
            if fd not in keep and fd != null:
                try:
                    os.dup2(null, fd, inheritable=False)
                except OSError:
                    pass  # the listing's own descriptor, closed by now
    finally:
        os.close(null)


# Where logging's handlers keep what they write to: a stream (StreamHandler,
# FileHandler), a TCP socket (SocketHandler), a UDP or Unix socket (SysLogHandler,
# DatagramHandler).
_HANDLER_ENDPOINTS: Final = ("stream", "sock", "socket")


def _logging_fds() -> set[int]:
    """The descriptors logging's handlers write to: a task's records must still arrive."""
    fds: set[int] = set()
    for handler in _all_handlers():
        for name in _HANDLER_ENDPOINTS:
            endpoint = getattr(handler, name, None)
            if endpoint is None:
                continue
            try:
                fd = endpoint.fileno()
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(fd, int) and fd >= 0:
                fds.add(fd)
    return fds


def _cap_memory(limit: int) -> None:
    """Let this process allocate at most ``limit`` bytes more than it inherited.

    RLIMIT_DATA counts private writable memory (heap, private mappings, file-backed
    copy-on-write ones included, thread stacks), which is what a Python task's
    objects and buffers occupy; not shared memory. RLIMIT_AS would also count
    read-only file mappings: a task merely mmap-reading a large file fails under it.
    The inherited part is measured from ``VmData`` so that a large parent does not
    eat the task's budget.
    """
    inherited = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            inherited = int(line.split()[1]) * 1024
            break
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = min(inherited + limit, MAX_MEMORY_LIMIT)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))


def _mark(task_id: str, name: bytes) -> None:
    """Mark this process as the task's, where a reaper can check it on the kernel.

    The name (``/proc/self/comm``) is inherited by processes the task forks; the
    environment variable by programs it execs.
    """
    _linux.set_name(name)
    os.environ[_procfs.TASK_ID_ENV] = task_id


def _become_independent(setup: _ChildSetup) -> None:
    # Objects inherited from the parent are never collected here; keeping the cycle
    # collector away from them avoids copying their pages for nothing.
    gc.freeze()
    os.setpgid(0, 0)
    for signum in setup.signals_to_reset:
        try:
            _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    try:
        _signal.set_wakeup_fd(-1)
    except ValueError:
        pass
    _signal.pthread_sigmask(_signal.SIG_SETMASK, setup.signal_mask)
    if _linux.set_parent_death_signal(signal.SIGKILL) and os.getppid() != setup.parent_pid:
        # The parent died before prctl took effect; nobody will read our result.
        os._exit(EXIT_ORPHANED)


def signals_to_reset() -> frozenset[int]:
    """Signals whose disposition the child must set back to the default.

    Those with a Python-level handler, and SIGINT, SIGTERM and SIGCHLD if ignored.
    Decided here in the parent: each ``signal.signal`` call costs the child dozens
    of copy-on-write page faults, so it resets only what is not already default.
    """
    # _signal rather than signal: the wrapper turns every answer into an enum, and
    # each object that touches is a page the parent faults on after every fork.
    return frozenset(
        signum
        for signum in _CATCHABLE
        if callable(handler := _signal.getsignal(signum))
        or (signum in _ALWAYS_RESET and handler == _signal.SIG_IGN)
    )


def block_signals_in_this_thread() -> frozenset[int]:
    """Block every catchable signal in the calling thread; return the previous mask.

    For forkpool's own threads: Python runs signal handlers in the main thread only,
    and the kernel gives a process-wide signal to a thread that does not block it.
    """
    previous: set[int] = _signal.pthread_sigmask(_signal.SIG_BLOCK, _CATCHABLE)
    return frozenset(previous)


@attrs.define
class _LoggingLocks:
    """Logging's locks, held across fork: all handlers, and those we could not take."""

    held: list[Any]
    handlers: list[logging.Handler]
    busy: list[logging.Handler]

    @classmethod
    def acquire(cls) -> _LoggingLocks:
        held: list[Any] = []
        module_lock = getattr(logging, "_lock", None)
        if module_lock is None or not module_lock.acquire(timeout=_MODULE_LOCK_WAIT):
            handlers = _all_handlers()
            return cls(held, handlers, handlers)
        held.append(module_lock)
        handlers = _all_handlers()
        busy: list[logging.Handler] = []
        deadline = 0.0
        for handler in handlers:
            lock = handler.lock
            if lock is None:
                continue
            if lock.acquire(blocking=False):
                held.append(lock)
                continue
            if not deadline:
                deadline = time.monotonic() + _HANDLER_LOCKS_WAIT
            if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                held.append(lock)
            else:
                busy.append(handler)
        return cls(held, handlers, busy)

    def release(self) -> None:
        for lock in reversed(self.held):
            lock.release()


def _give_fresh_streams(handlers: list[logging.Handler]) -> None:
    """In the child: replace the streams of handlers that were busy at fork time.

    The replaced stream is kept, never collected: it owns its descriptor (a
    FileHandler's file), and collecting it would close that descriptor under the
    new stream, whose writes would then fail, or, once the task opened a file of
    its own under the freed number, land in the task's file.
    """
    for handler in handlers:
        stream = getattr(handler, "stream", None)
        if not isinstance(handler, logging.StreamHandler) or type(stream) is not io.TextIOWrapper:
            continue
        if stream in (sys.stdout, sys.stderr):
            continue  # already a fresh spare
        with contextlib.suppress(OSError, ValueError):
            handler.stream = _fresh_text_stream(stream, stream.fileno())
            _REPLACED_STREAMS.append(stream)


# In a child: the stream objects it replaced, kept until os._exit (see above).
_REPLACED_STREAMS: list[object] = []


def _all_handlers() -> list[logging.Handler]:
    # logging keeps a weak list of every handler; reading it touches a few objects,
    # where walking every logger would touch (and fault on) hundreds.
    handler_refs = getattr(logging, "_handlerList", None)
    if handler_refs is not None:
        return [handler for ref in list(handler_refs) if (handler := ref()) is not None]
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers.extend(
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    )
    seen: dict[int, logging.Handler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            seen.setdefault(id(handler), handler)
    return list(seen.values())


def _flush_before_fork(spares: _SpareStdio) -> None:
    """In the parent: flush stdout and stderr, without ever blocking on them.

    A stream the child keeps must be flushed, or the child would print its copy of
    the buffer again. One the child replaces is flushed only if that cannot block.
    """
    for stream, fd, replacement in zip(spares.originals, (1, 2), spares.replacements, strict=True):
        if stream is None or (replacement is not None and not _room_to_flush(fd)):
            continue
        try:
            stream.flush()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001, S110 - a broken stream must not stop a fork
            pass


# What a text stream may hold unwritten: the text layer's pending chunk (8 KiB, and
# as much again for the write that overflows it) and the buffer below (8 KiB).
_UNWRITTEN_MAX: Final = 3 * io.DEFAULT_BUFFER_SIZE


def _room_to_flush(fd: int) -> bool:
    """Writing a text stream's whole buffer to ``fd`` would not block now.

    A pipe must have room for the most a stream can hold. A pipe without room is
    one its reader has let fill, and a thread writing to it may hold the stream's
    lock: the flush would wait for that thread, forever if nobody reads.
    """
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return True
        if stat.S_ISFIFO(mode):
            unread = fcntl.ioctl(fd, termios.FIONREAD, _INT_BYTES)
            return bool(
                fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) - _INT.unpack(unread)[0] >= _UNWRITTEN_MAX
            )
        return bool(select.select([], [fd], [], 0)[1])
    except (OSError, ValueError):
        return False


_INT: Final = struct.Struct("i")
_INT_BYTES: Final = bytes(_INT.size)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - a broken stream must not stop a fork
                pass


def describe_status(status: int) -> tuple[int | None, int | None]:
    """Split a wait status into (exit code, signal number); one of them is None."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None
