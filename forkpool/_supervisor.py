"""The supervisor: one thread per executor that forks, reads, reaps and resolves.

It blocks in epoll on three kinds of descriptor: its wake-up pipe (submit,
cancel, shutdown), each child's result pipe (read as data arrives, so a child
writing a large result never blocks on a full pipe), and each child's pidfd (which
becomes readable when the child exits). The poll timeout is the nearest task
deadline or SIGKILL escalation, so there is no polling loop -- except on kernels
without pidfd (Linux < 5.3), where exits are peeked every 50 ms.

Each fork write-protects every page of this process, so each page the parent
writes before the next fork is a copy-on-write fault; with Python's reference
counts, touching an object writes its page. The per-task path is therefore kept
short in objects as well as in time: epoll used directly rather than through the
selectors module, no per-task closures or context managers, one read per readiness.

The supervisor keeps its own copy of each pipe's write end until the child is
reaped. The pipe therefore never reports EOF (exits are seen through the pidfd,
not through EOF), and a task that closes or overwrites its end of the pipe can
re-open it through ``/proc/<parent>/fd/<n>`` to deliver its outcome.

Which tasks may start is ``_slots``' business; how a child comes to exist is the
spawner's (``_spawn``): this thread forks (or asks a mold) and watches.

A deadline found passed is checked against what the child did before it: the
supervisor reads what the child sent first, and a task whose DONE frame says it
finished in time is left to exit. This thread can be late -- a slow callback, a
large result to unpickle, the whole process stopped -- and lateness must not turn
into a timeout.

Only this thread signals or reaps children. A child that has not been reaped still
owns its pid and its process group id (even as a zombie), so every ``killpg`` here
reaches the group we created and never a stranger that inherited a recycled pid.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import platform
import select
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Final

import attrs

from forkpool import _fork, _linux, _observe, _wire
from forkpool._child import Child, StopReason, settle
from forkpool._errors import ForkPoolError
from forkpool._options import task_name
from forkpool._slots import Slots, WorkItem
from forkpool._spawn import ForkHere
from forkpool._tracking import Forked

if TYPE_CHECKING:
    from collections.abc import Callable

    from forkpool._bookkeeping import Bookkeeper
    from forkpool._future import ForkFuture
    from forkpool._spawn import Spawned, Spawner
    from forkpool._tracking import TrackingContext


logger = logging.getLogger("forkpool")

# Without pidfds, how often running children are checked for an exit.
_EXIT_POLL_INTERVAL: Final = 0.05
# The longest single wait: epoll takes milliseconds as a C int (24.8 days), and a
# deadline further away is simply waited for in steps.
_MAX_POLL_WAIT: Final = 3600.0
# At a passed deadline, at most this many reads of what the child sent first.
_DEADLINE_READS: Final = 64


@attrs.frozen
class Hooks:
    """The user's fork hooks (each may be None)."""

    parent_pre_fork: Callable[..., object] | None = None
    parent_post_fork: Callable[..., object] | None = None
    child_post_fork: Callable[..., object] | None = None


@attrs.frozen
class SupervisorConfig:
    """What a supervisor needs from its executor; it holds nothing else of it."""

    max_workers: int
    initializer: Callable[..., object] | None
    initargs: tuple[Any, ...]
    hooks: Hooks


@attrs.frozen
class _Cancel:
    future: ForkFuture[Any]


@attrs.frozen
class _WaitEnded:
    future: ForkFuture[Any]
    error: BaseException


@attrs.frozen
class _StopAll:
    signum: int
    reason: StopReason


@attrs.frozen
class _Signal:
    future: ForkFuture[Any]
    signum: int


# What other threads ask of the supervisor, in the order they asked.
_Command = _Cancel | _WaitEnded | _StopAll | _Signal


class Supervisor:
    """Runs one executor's children; see the module docstring."""

    def __init__(
        self,
        config: SupervisorConfig,
        *,
        tracking: TrackingContext | None = None,
        bookkeeper: Bookkeeper | None = None,
        on_finished: Callable[[], None] | None = None,
        spawner: Spawner | None = None,
    ) -> None:
        self._config = config
        self._on_finished = on_finished
        self._tracking = tracking
        self._bookkeeper = bookkeeper
        # How a child comes to exist: a fork of this process, or a mold's.
        self._spawner: Spawner = ForkHere() if spawner is None else spawner
        self._slots = Slots(config.max_workers)
        # Filled in any thread, emptied here; deque ops are atomic.
        self._commands: collections.deque[_Command] = collections.deque()
        self._children: dict[int, Child] = {}
        self._poller = select.epoll()
        # The child each polled pipe or pidfd belongs to (the wake-up pipe is not here).
        self._watched: dict[int, Child] = {}
        self._scratch = bytearray(_wire.SCRATCH_SIZE)
        # The children with a deadline or a pending SIGKILL, and those without a
        # pidfd: the only ones the timing and polling loops need to look at.
        self._timed: dict[int, Child] = {}
        self._unpolled: dict[int, Child] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Reentrant: a signal handler may wake this thread (a Celery shutdown stopping
        # the running tasks) while the main thread it interrupted is inside wake()
        # itself, submitting; a plain lock would deadlock the main thread there.
        self._wake_lock = threading.RLock()
        self._closed = False
        self._poller.register(self._wake_r, select.EPOLLIN)
        self._shutting_down = False
        self._refusing = False
        self._abandoned = False
        self._abandon_handled = False
        self._warned_refused = False
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="forkpool-supervisor", daemon=True)

    # --- called from other threads ---------------------------------------------------

    def start(self) -> None:
        """Start the supervisor thread."""
        self._thread.start()

    def submit(self, item: WorkItem) -> None:
        """Queue a task: started now if a slot is free, else when one frees up."""
        self._slots.admit(item)
        self.wake()

    def cancel(self, future: ForkFuture[Any]) -> None:
        """Stop the child of a cancelled future (a pending one is simply skipped)."""
        self._commands.append(_Cancel(future))
        self.wake()

    def wait_ended(self, future: ForkFuture[Any], error: BaseException) -> None:
        """An exception ended the wait for ``future``'s result: stop its task."""
        self._commands.append(_WaitEnded(future, error))
        self.wake()

    def stop_all(self, signum: int, reason: StopReason) -> None:
        """Signal every running child's group; SIGTERM escalates after the grace."""
        self._commands.append(_StopAll(signum, reason))
        self.wake()

    def send_signal(self, future: ForkFuture[Any], signum: int) -> None:
        """Send ``signum`` to ``future``'s child alone, if it is still running."""
        self._commands.append(_Signal(future, signum))
        self.wake()

    def cancel_pending(self, *, started_too: bool = False, contain: bool = False) -> None:
        """Cancel the tasks still waiting for a slot (and, if asked, those not forked yet).

        ``contain``: no done-callback's exception escapes (forkpool's own threads, and
        a finalizer).
        """
        self._slots.cancel_waiting(started_too=started_too, contain=contain)

    def refuse_forks(self) -> None:
        """Fork nothing more: each task not forked yet is cancelled when its turn comes.

        Safe in a signal handler: it only sets a flag (no lock, no wake-up). The
        thread looks at it before every fork; running children are left alone.
        """
        self._refusing = True

    def begin_shutdown(self) -> None:
        """Finish the queued and running tasks, then exit the thread."""
        self._shutting_down = True
        self.wake()

    def abandon(self) -> int:
        """The executor was dropped without shutdown: stop everything; return how many ran.

        What has not been forked is cancelled here and now, not when this thread
        gets to it: such a task always ends cancelled, never forked and then killed.
        """
        running = len(self._children)
        self._abandoned = True
        self.cancel_pending(started_too=True, contain=True)
        self.wake()
        return running

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to exit; True if it has."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """The thread is running."""
        return self._thread.is_alive()

    @property
    def running(self) -> int:
        """Children forked and not yet reaped (any thread may ask)."""
        return len(self._children)

    def wake(self) -> None:
        """Interrupt the poll so the thread looks at its queues."""
        with self._wake_lock:
            if self._closed:
                return
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")

    # --- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._spawner.adopt_thread()
            while self._step():
                pass
        except BaseException as exc:
            self.failure = exc
            logger.critical("forkpool supervisor failed; failing all tasks", exc_info=True)
            self._fail_everything(exc)
        finally:
            self._close()
            if self._bookkeeper is not None:
                self._bookkeeper.close(timeout=0)
            self._spawner.close()
            if self._on_finished is not None:
                self._on_finished()

    def _step(self) -> bool:
        self._run_commands()
        self._dispatch()
        if self._finished():
            return False
        for fd, _ in self._poller.poll(self._next_timeout()):
            child = self._watched.get(fd)
            if child is None:
                if fd == self._wake_r:
                    self._drain_wakeups()
            elif fd == child.read_fd:
                self._read(child)
            else:
                self._reap(child)
        if self._unpolled:
            self._peek_exits_without_pidfd()
        if self._timed:
            self._enforce_deadlines(time.monotonic())
        return True

    def _finished(self) -> bool:
        return (self._shutting_down or self._abandoned) and self._slots.idle

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _run_commands(self) -> None:
        if self._abandoned and not self._abandon_handled:
            self._abandon_handled = True
            for child in list(self._children.values()):
                self._stop(child, StopReason.ABANDONED, signal.SIGTERM)
        while self._commands:
            self._run_command(self._commands.popleft())

    def _run_command(self, command: _Command) -> None:
        if isinstance(command, _StopAll):
            for child in list(self._children.values()):
                self._stop(child, command.reason, command.signum)
            return
        target = self._child_of(command.future)
        if isinstance(command, _Signal):
            if target is not None and not target.exited and self._spawner.unreaped(target.pid):
                target.signal_leader(command.signum)
        elif isinstance(command, _Cancel):
            if target is not None:
                self._stop(target, StopReason.CANCELLED, signal.SIGTERM)
        elif target is not None:
            self._stop(target, StopReason.WAIT_ENDED, signal.SIGTERM, error=command.error)
        else:  # the wait ended before the fork: it never will be
            command.future._cancel(contain=True)  # noqa: SLF001

    def _child_of(self, future: ForkFuture[Any]) -> Child | None:
        # A scan, not an index: at most max_workers children, and stopping one is
        # rare while every task would pay for the index.
        for child in self._children.values():
            if child.future is future:
                return child
        return None

    def _dispatch(self) -> None:
        # Until none is left: a task that is never forked hands its slot on at once.
        while self._slots.any_ready:
            for item in self._slots.take_ready():
                if self._abandoned or self._refusing:
                    item.future._cancel(contain=True)  # noqa: SLF001 - see abandon()
                if item.future.cancelled():  # between submit() and now
                    self._slots.release()
                else:
                    self._launch(item)

    def _fail_launch(self, future: ForkFuture[Any], error: BaseException) -> None:
        self._slots.release()
        future._resolve(exception=error)  # noqa: SLF001

    def _launch(self, item: WorkItem) -> None:
        future, fn, args, kwargs = item.future, item.fn, item.args, item.kwargs
        hooks = self._config.hooks
        try:
            if hooks.parent_pre_fork is not None:
                hooks.parent_pre_fork(fn, args, kwargs)
        except BaseException as exc:  # noqa: BLE001 - a hook failure is that task's outcome
            self._fail_launch(future, exc)
            return
        try:
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:
            self._fail_launch(future, _with_context(exc, "cannot create the result pipe"))
            return
        task_id = os.urandom(16).hex() if self._bookkeeper is not None else None
        task = _fork.ChildTask(
            fn=fn,
            args=args,
            kwargs=kwargs,
            initializer=self._config.initializer,
            initargs=self._config.initargs,
            child_post_fork=hooks.child_post_fork,
            task_id=task_id,
            memory_limit=item.options.memory_limit,
            keep_fds=item.options.pass_fds if item.options.close_fds else None,
            pickled=item.pickled,
            pass_fds=item.options.pass_fds,
            prelude=item.prelude,
        )
        accounting = future._accounting  # noqa: SLF001 - set when metrics are on
        if accounting is not None:
            forking = time.monotonic()
            accounting.queued = forking - accounting.submitted
        try:
            spawned = self._spawner.spawn(
                task, read_fd, write_fd, self._parent_fds(read_fd), self._children
            )
        except (OSError, RuntimeError) as exc:
            os.close(read_fd)
            os.close(write_fd)
            if isinstance(exc, OSError):
                self._fail_launch(future, _with_context(exc, "fork failed"))
            else:
                self._fail_launch(future, self._refused_at_exit(exc))
            return
        finally:
            del task
        pid = spawned.pid
        if accounting is not None:
            accounting.fork = time.monotonic() - forking
        child = self._track(spawned, item, read_fd, write_fd, task_id)
        # The supervisor holds the callable and its arguments no longer than needed.
        item.fn = item.args = item.kwargs = None  # type: ignore[assignment]
        item.pickled = None
        try:
            if hooks.parent_post_fork is not None:
                hooks.parent_post_fork(fn, args, kwargs, pid)
        except BaseException as exc:  # noqa: BLE001 - a hook failure is that task's outcome
            self._stop(child, StopReason.HOOK_FAILED, signal.SIGKILL, error=exc)

    def _track(
        self, spawned: Spawned, item: WorkItem, read_fd: int, write_fd: int, task_id: str | None
    ) -> Child:
        pid = spawned.pid
        os.set_blocking(read_fd, False)
        pidfd = None
        if _linux.HAS_PIDFD:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pass  # out of descriptors: exits are polled for instead
        now = time.monotonic()
        timeout = item.options.timeout
        child = Child(
            pid=pid,
            future=item.future,
            options=item.options,
            task_id=task_id,
            read_fd=read_fd,
            write_fd=write_fd,
            pidfd=pidfd,
            started=now,
            deadline=None if timeout is None else now + timeout,
            resident_at_start=spawned.resident_at_start,
            name=task_name(item.fn),
        )
        item.future.pid = pid
        item.future._log_extra = child.log_extra()  # noqa: SLF001 - for its callbacks' logs
        self._children[pid] = child
        self._watched[read_fd] = child
        self._poller.register(read_fd, select.EPOLLIN)
        if pidfd is not None:
            self._watched[pidfd] = child
            self._poller.register(pidfd, select.EPOLLIN)
        else:
            self._unpolled[pid] = child
        if timeout is not None:
            self._timed[pid] = child
        if task_id is not None and self._bookkeeper is not None:
            self._bookkeeper.register(
                Forked(
                    task_id=task_id,
                    pid=pid,
                    name=child.name,
                    started=time.time(),
                    timeout=item.options.timeout,
                    ttl=item.options.ttl,
                )
            )
        return child

    def _parent_fds(self, read_fd: int) -> list[int]:
        """Descriptors of the supervisor that a new child must close."""
        fds = [self._wake_r, self._wake_w, read_fd, self._poller.fileno()]
        for child in self._children.values():
            fds.extend(fd for fd in (child.read_fd, child.write_fd, child.pidfd) if fd is not None)
        return fds

    def _read(self, child: Child) -> bool:
        """Read once from the child's pipe; False when nothing more is there now.

        Once per readiness: epoll reports the pipe again while bytes remain.
        """
        fd = child.read_fd
        if fd is None:
            return False
        try:
            frames = child.reader.read(fd, self._scratch)
        except BlockingIOError:
            return False
        except (_wire.FrameError, OSError) as exc:
            self._corrupt(child, exc)
            return False
        for frame in frames:
            if not self._take(child, frame):
                return False
        if child.reader.eof:
            self._close_pipe(child)
            return False
        return True

    def _refused_at_exit(self, exc: RuntimeError) -> ForkPoolError:
        """os.fork() refused: the interpreter is exiting (3.12.0-3.12.2 refuse it at once)."""
        if not self._warned_refused:
            self._warned_refused = True
            logger.warning(
                "forkpool cannot start the tasks still queued: %s (Python %s refuses fork() "
                "once the interpreter begins to exit; 3.12.3 and later allow it). Tasks "
                "already running are waited for; call shutdown(wait=True) before the "
                "program ends to run the rest",
                exc,
                platform.python_version(),
            )
        error = ForkPoolError(f"the task could not be started: {exc}")
        error.__cause__ = exc
        return error

    def _take(self, child: Child, frame: _wire.Frame) -> bool:
        kind = frame.kind
        if kind is _wire.Kind.PROGRESS:
            self._deliver_progress(child, frame.payload)  # type: ignore[arg-type]  # never mapped
        elif kind is _wire.Kind.SPANS:
            _observe.child_spans(bytes(frame.payload))
        elif child.outcome is not None:
            self._corrupt(child, _wire.FrameError("a frame after the outcome"))
            return False
        elif kind is _wire.Kind.DONE:
            if child.finished_at is not None or len(frame.payload) != _wire.DONE_STAMP.size:
                self._corrupt(child, _wire.FrameError("a second or malformed DONE frame"))
                return False
            child.finished_at, resident = _wire.DONE_STAMP.unpack(frame.payload)
            if resident >= 0:  # measured by the child itself: later, so truer, than ours
                child.resident_at_start = resident
        elif kind in _wire.BUFFER_KINDS:
            child.buffers.append(frame.payload)  # type: ignore[arg-type]  # never bytes
        else:
            child.outcome = frame
            if (
                child.deadline is not None
                and child.pid not in self._timed
                and child.stop_reason is None
            ):
                # Its deadline passed while it was still sending (see _judge_deadline).
                self._stop(child, StopReason.TIMEOUT, signal.SIGTERM)
        return True

    def _corrupt(self, child: Child, error: BaseException) -> None:
        self._close_pipe(child)
        self._stop(child, StopReason.CORRUPT, signal.SIGKILL, error=error)

    def _drain(self, child: Child) -> None:
        """The child has exited: read what it left in the pipe, up to its outcome.

        Not up to EOF: a grandchild may hold a copy of the write end.
        """
        while child.outcome is None and self._read(child):
            pass

    def _deliver_progress(self, child: Child, payload: bytes | bytearray) -> None:
        try:
            value = pickle.loads(payload)  # noqa: S301 - bytes from our own child
        except BaseException:
            logger.warning(
                "ignoring a progress value from child %d that does not unpickle",
                child.pid,
                exc_info=True,
                extra=child.log_extra(),
            )
            return
        if child.stop_reason is not StopReason.CANCELLED:
            child.future._report_progress(value)  # noqa: SLF001

    def _close_pipe(self, child: Child) -> None:
        if child.read_fd is not None:
            # Unregistered explicitly: epoll watches the open pipe, not the number,
            # and a child may still hold a copy of the read end for a moment.
            self._poller.unregister(child.read_fd)
            del self._watched[child.read_fd]
            os.close(child.read_fd)
            child.read_fd = None
        if child.write_fd is not None:
            os.close(child.write_fd)
            child.write_fd = None

    def _reap(self, child: Child) -> None:
        child.exited = True
        # Everything the child wrote is in the pipe by now.
        self._drain(child)
        self._close_pipe(child)
        # Whatever is left in the group outlived its task. The zombie leader still
        # pins the group id, so this reaches only the task's own descendants.
        pid = child.pid
        if self._spawner.unreaped(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass  # nothing left to kill
        if child.tree is not None:
            # A stopped task's descendants in other groups go with it.
            child.tree.send(signal.SIGKILL)
            child.tree.close()
        if child.task_id is not None and self._bookkeeper is not None:
            self._bookkeeper.remove(child.task_id)  # before the reap; see Bookkeeper.remove
        future = child.future
        reaped = self._spawner.reap(pid)
        status = reaped.status
        future._set_usage(  # noqa: SLF001
            reaped.rusage, time.monotonic() - child.started, child.resident_at_start
        )
        if child.pidfd is not None:
            self._poller.unregister(child.pidfd)
            del self._watched[child.pidfd]
            os.close(child.pidfd)
            child.pidfd = None
        del self._children[pid]
        self._timed.pop(pid, None)
        self._unpolled.pop(pid, None)
        # Before settling: a done-callback that submits finds the slot free.
        self._slots.release()
        exitcode, signum = (None, None) if status < 0 else _fork.describe_status(status)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "child %d ended (exit code %s, signal %s): %s",
                pid,
                exitcode,
                signum,
                future.rusage,
                extra=child.log_extra(),
            )
        settle(child, exitcode, signum, unknown_because=reaped.unknown_because)
        accounting = future._accounting  # noqa: SLF001 - set when metrics are on
        if accounting is not None:
            accounting.exitcode, accounting.signal = exitcode, signum
            accounting.report(future)

    def _stop(
        self,
        child: Child,
        reason: StopReason,
        signum: int,
        *,
        error: BaseException | None = None,
    ) -> None:
        if child.stop_reason is None:
            child.stop_reason = reason
            child.stop_error = error
            child.outcome_before_stop = child.outcome is not None
        if child.exited:
            return
        grace = child.options.kill_grace
        if signum == signal.SIGTERM and grace > 0:
            if child.kill_at is not None:
                return  # already sent; SIGKILL follows at kill_at
            self._signal(child, signal.SIGTERM)
            child.kill_at = time.monotonic() + grace
            self._timed[child.pid] = child
        else:
            self._signal(child, signal.SIGKILL)
            child.kill_at = None

    def _signal(self, child: Child, signum: int) -> None:
        """Signal the task's whole process tree, if the child is still ours to signal."""
        if self._spawner.unreaped(child.pid):
            child.signal_tree(signum)
        # else something else reaped it: its pid and group id may be a stranger's

    def _enforce_deadlines(self, now: float) -> None:
        for child in list(self._timed.values()):
            if child.exited:
                continue
            if child.kill_at is not None and now >= child.kill_at:
                logger.warning(
                    "child %d ignored SIGTERM; sending SIGKILL", child.pid, extra=child.log_extra()
                )
                self._signal(child, signal.SIGKILL)
                child.kill_at = None
            elif child.stop_reason is None and child.deadline is not None and now >= child.deadline:
                self._judge_deadline(child)

    def _judge_deadline(self, child: Child) -> None:
        """The deadline has passed: stop the task unless it finished before it."""
        for _ in range(_DEADLINE_READS):
            if child.finished_at is not None or child.outcome is not None or not self._read(child):
                break
        if child.stop_reason is not None:
            return  # the stream was corrupt: already stopped
        if child.finished_in_time:
            # Its outcome stands. Once all of it is here, the child is only exiting,
            # or stuck flushing its output to a full pipe: either way it must go.
            if child.outcome is not None:
                self._stop(child, StopReason.TIMEOUT, signal.SIGTERM)
            else:
                del self._timed[child.pid]  # still sending: _take stops it after
            return
        if child.finished_at is None and not self._spawner.running(child.pid):
            self._reap(child)  # it ended by itself, sending nothing: say how
            return
        self._stop(child, StopReason.TIMEOUT, signal.SIGTERM)

    def _next_timeout(self) -> float | None:
        if not self._timed and not self._unpolled:
            return None
        wake_at: float | None = None
        for child in self._timed.values():
            for moment in (child.kill_at, None if child.stop_reason else child.deadline):
                if moment is not None and (wake_at is None or moment < wake_at):
                    wake_at = moment
        timeout = None if wake_at is None else min(_MAX_POLL_WAIT, wake_at - time.monotonic())
        if self._unpolled:
            timeout = _EXIT_POLL_INTERVAL if timeout is None else min(timeout, _EXIT_POLL_INTERVAL)
        return None if timeout is None else max(0.0, timeout)

    def _peek_exits_without_pidfd(self) -> None:
        for child in list(self._unpolled.values()):
            if not child.exited and not self._spawner.running(child.pid):
                self._reap(child)

    # --- the end -----------------------------------------------------------------------

    def _fail_everything(self, cause: BaseException) -> None:
        error = ForkPoolError(f"forkpool's supervisor thread failed: {cause!r}")
        error.__cause__ = cause
        for child in list(self._children.values()):
            with contextlib.suppress(OSError):
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                self._spawner.reap(child.pid)
            child.future._resolve(exception=error)  # noqa: SLF001
        self._children.clear()
        self._timed.clear()
        self._unpolled.clear()
        for item in self._slots.clear():
            item.future._start_running()  # noqa: SLF001 - no-op for a started one
            item.future._resolve(exception=error)  # noqa: SLF001

    def _close(self) -> None:
        with self._wake_lock:
            self._closed = True
            os.close(self._wake_r)
            os.close(self._wake_w)
        for child in list(self._children.values()):
            for fd in (child.read_fd, child.write_fd, child.pidfd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        self._poller.close()


def _with_context(exc: OSError, what: str) -> OSError:
    error = OSError(exc.errno, f"{what}: {exc.strerror}")
    error.__cause__ = exc
    return error
