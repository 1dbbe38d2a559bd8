"""ForkPool: Celery's worker pool interface over a ForkPerTaskExecutor.

Threads::

    worker main thread            supervisor thread          pool's callback thread
    ------------------            -----------------          ----------------------
    on_apply(target, ...) --> submit --> fork ----------+
                                          |             |
                                     parent_post_fork --+--> accept_callback(pid, t)
                                                        |    soft limit due: timeout_callback,
                                                        |      SIGUSR1 to the child
                                     reap, resolve -----+--> callback / error_callback
                                                             (+ timeout_callback, hard)
    terminate_job(pid, sig) --> future.send_signal(sig)

    worker_shutting_down (in Celery's signal handler): cancel what is not forked
      yet (in the callback thread), wake the worker's event loop through a pipe

    a task's child reaped --> its slot freed: wake the event loop, which releases
      Celery's semaphore there (the next waiting request comes to on_apply)

As under prefork, the worker hands a request over only when a slot is free (the
pool ``uses_semaphore``), so Celery checks revocation and expiry at that moment:
a task revoked, or past its ``expires``, while it waited for a slot never runs.

Celery's callbacks store results, send events and acknowledge messages; they may
wait on the result backend or the broker. They run in one thread of the pool's, in
the order the events happened (a task's acceptance always before its outcome),
never in the supervisor, which must go on forking and reaping meanwhile.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Final

import attrs
from billiard.common import human_status
from billiard.einfo import ExceptionInfo
from celery import signals
from celery.concurrency.base import BasePool
from celery.exceptions import (
    SoftTimeLimitExceeded,
    Terminated,
    TimeLimitExceeded,
    WorkerLostError,
)

from forkpool import _reaper
from forkpool._errors import ChildDiedError, TaskTimeoutError
from forkpool._executor import ForkPerTaskExecutor
from forkpool._future import ForkFuture
from forkpool._options import options, unwrap
from forkpool.celery import _in_child, _locks, _metrics, _mold, _settings
from forkpool.celery._callbacks import CallbackThread

if TYPE_CHECKING:
    from collections.abc import Callable

    from kombu.asynchronous import Hub

    from forkpool._mold import Mold

logger = logging.getLogger("forkpool.celery")

# What revoke(terminate=True) sends when it names no signal (billiard's default).
_TERM_SIGNAL: Final = signal.SIGTERM
# The signals that begin a worker's shutdown: warm (SIGTERM, SIGINT) or cold (SIGQUIT).
_SHUTDOWN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


@attrs.define(eq=False)
class _Job:
    """One task as the pool runs it: what to call in the child, and whom to tell."""

    target: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    node_name: str | None
    callback: Callable[..., Any] | None
    accept_callback: Callable[..., Any] | None
    timeout_callback: Callable[..., Any] | None
    error_callback: Callable[..., Any] | None
    soft_timeout: float | None
    timeout: float | None
    future: ForkFuture[Any] | None = None
    pid: int | None = None
    # The signal terminate_job() sent, if any: a death by it means "revoked".
    terminated_by: int | None = None
    soft_limit_sent: bool = False

    def __call__(self) -> Any:
        """In the child: the task (Celery's tracer, which stores its outcome)."""
        return _in_child.run(self.node_name, self.target, *self.args, **self.kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # To a mold, only what the child runs travels: the callbacks stay here.
        return (_in_child.job, (self.node_name, self.target, self.args, self.kwargs))


class ApplyResult:
    """What ``on_apply`` returns: Celery calls ``terminate`` on it, and may wait on it."""

    def __init__(self, job: _Job) -> None:
        self._job = job

    def get(self, timeout: float | None = None) -> Any:
        """The child's return value (Celery's tracer tuple)."""
        return self._future.result(timeout)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the task to end."""
        self._future.exception(timeout)

    def ready(self) -> bool:
        """The task has ended."""
        return self._future.done()

    def terminate(self, signum: int | None = None) -> None:
        """Nothing: Celery terminates a task through ``terminate_job`` once it is accepted."""
        del signum

    @property
    def _future(self) -> ForkFuture[Any]:
        future = self._job.future
        assert future is not None  # set before on_apply returns  # noqa: S101
        return future

    def worker_pids(self) -> list[int]:
        """The task's child, once forked."""
        return [] if self._job.pid is None else [self._job.pid]


class ForkPool(BasePool):
    """A Celery worker pool that runs every task in a fresh fork of the worker.

    Select it with ``worker_pool = "forkpool.celery:ForkPool"``, or with
    ``CELERY_CUSTOM_WORKER_POOL=forkpool.celery:ForkPool`` and ``--pool custom``.
    ``--concurrency`` is how many children run at once. See the package's
    docstring for how Celery's semantics map, and ``_settings`` for its settings.
    """

    signal_safe = False  # shutting down waits for threads: not in a signal handler
    # The worker acquires a slot of its semaphore (with an event loop: Redis, AMQP...)
    # before it hands a request over; the pool releases it when the child is reaped.
    uses_semaphore = True
    body_can_be_buffer = True
    task_join_will_block = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As Celery makes every pool: ``limit`` and the worker's options."""
        super().__init__(*args, **kwargs)
        initargs: tuple[Any, ...] = self.options.get("initargs") or ()
        self.node_name: str | None = initargs[1] if len(initargs) > 1 else None
        self._default_timeout: float | None = self.options.get("timeout")
        self._default_soft_timeout: float | None = self.options.get("soft_timeout")
        self._executor: ForkPerTaskExecutor | None = None
        self._callbacks = CallbackThread()
        self._by_pid: dict[int, _Job] = {}
        # Submitted, not forked yet: what a shutdown leaves to the broker.
        self._unforked: set[_Job] = set()
        self._closing = False
        # Inside Celery's shutdown-signal handler (see _signalled): how deep.
        self._in_signal_handler = 0
        self._tracking: dict[str, Any] = {}
        # Where tasks are forked from (see _mold): None for the worker process itself.
        self._mold: Mold | None = None
        # The HTTP server of forkpool_metrics_port, if that is set (see _metrics).
        self._metrics_server: Any = None
        # A pipe the worker's event loop reads, to wake it (see _shutdown_begins).
        # Reentrant: a shutdown signal's handler wakes the loop, and may interrupt the
        # main thread while it closes the pipe.
        self._hub_wakeup: tuple[int, int] | None = None
        self._hub_wakeup_lock = threading.RLock()
        # The worker's LaxBoundedSemaphore, which only its event loop's thread may
        # touch: slots freed elsewhere wait here until the loop wakes.
        self._semaphore: Any = self.options.get("semaphore")
        self._slots_freed: collections.deque[None] = collections.deque()

    # --- Celery's pool interface ------------------------------------------------------

    def on_start(self) -> None:
        """Start the executor (and its Redis tracking and reaper) with the worker."""
        kwargs = _settings.executor_kwargs(self.app, node_name=self.node_name)
        self._tracking = {
            "redis": kwargs["redis"],
            "key_prefix": kwargs["key_prefix"],
            "host": kwargs.get("host"),
        }
        self._mold = _mold.make(self.app, self.node_name)
        self._metrics_server = _metrics.serve(self.app)
        hooks: dict[str, Any] = {
            "parent_pre_fork": self._before_fork,
            "child_post_fork": self._enter_child,
        }
        if self._mold is not None:
            # The mold made the app current, and its result backend, once.
            hooks = {"child_post_fork": functools.partial(_in_child.enter_hook, self.node_name)}
        try:
            self._executor = ForkPerTaskExecutor(
                max_workers=self.limit,
                parent_post_fork=self._forked,
                mold=self._mold,
                name=self.node_name or "celery",
                **hooks,
                **kwargs,
            )
        except (TypeError, ValueError) as exc:
            self._close_mold()
            _metrics.stop(self._metrics_server)
            raise _settings.explain(exc) from exc
        self._callbacks.start()
        signals.worker_shutting_down.connect(self._shutdown_begins, weak=False)
        self._refuse_forks_first_on(_SHUTDOWN_SIGNALS)

    def register_with_event_loop(self, loop: Hub) -> None:
        """Give the worker's event loop a descriptor that a shutdown signal can wake."""
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._hub_wakeup = (read_end, write_end)
        loop.add_reader(read_end, self._on_hub_wakeup, read_end)
        on_close: Any = loop.on_close  # a set in kombu (celery-types says a list)
        on_close.add(self._close_hub_wakeup)

    def on_apply(  # type: ignore[override]  # noqa: PLR0917 - as Celery calls it
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        timeout_callback: Callable[..., Any] | None = None,
        error_callback: Callable[..., Any] | None = None,
        soft_timeout: float | None = None,
        timeout: float | None = None,
        **_: Any,
    ) -> ApplyResult:
        """Fork a child for one task; its outcome reaches the callbacks."""
        job = _Job(
            target,
            tuple(args or ()),
            dict(kwargs or {}),
            self.node_name,
            callback,
            accept_callback,
            timeout_callback,
            error_callback,
            soft_timeout=soft_timeout or self._default_soft_timeout,
            timeout=timeout or self._default_timeout,
        )
        if self._closing:  # received as the shutdown began: left unacked
            job.future = ForkFuture()
            job.future.cancel()
            return ApplyResult(job)
        fn: Callable[[], Any] = job if job.timeout is None else options(timeout=job.timeout)(job)
        job.future = self._running_executor().submit(fn)
        self._unforked.add(job)
        job.future.add_done_callback(lambda _: self._done(job))
        if self._shutdown_has_begun():  # it began while this task was being submitted
            job.future.cancel()
        return ApplyResult(job)

    def terminate_job(self, pid: int, signal: int | None = None) -> None:
        """``revoke(terminate=True)``: send ``signal`` (SIGTERM) to that task's child."""
        job = self._by_pid.get(pid)
        if job is None or job.future is None:
            return  # it has ended (billiard, too, ignores a pid it does not run)
        job.terminated_by = signal or _TERM_SIGNAL
        job.future.send_signal(job.terminated_by)

    def on_stop(self) -> None:
        """Warm shutdown: the running tasks finish; those not forked yet are left unacked."""
        self._closing = True
        if self._executor is not None:
            self._executor._refuse_forks()  # noqa: SLF001 - forkpool's own
            if self._in_signal_handler:
                # Celery's cold shutdown stops the pool from its signal handler, which
                # may have interrupted this very thread inside the executor, holding
                # its locks: waiting here would deadlock the worker. Nothing forks any
                # more; Celery terminates the pool from its loop next (on_terminate),
                # and the wait happens there.
                self._wake_hub()
                return
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._finish()

    def on_terminate(self) -> None:
        """Cold shutdown: stop every child (SIGTERM, then SIGKILL after the grace)."""
        self._closing = True
        if self._executor is not None:
            self._executor.terminate_workers()
            self._executor.shutdown(wait=True)
        self._finish()

    def on_close(self) -> None:
        """Take no more tasks; those not forked yet are left unacked (the broker redelivers).

        Celery closes the pool as a shutdown begins and stops it later, after the
        consumer: a task queued here must not be forked in between.
        """
        self._closing = True  # a task Celery still hands over is left unacked too
        if self._executor is not None:
            self._executor._refuse_forks()  # noqa: SLF001 - forkpool's own
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super()._get_info()  # type: ignore[misc]  # not in the stubs
        info.update(
            {
                "implementation": "forkpool.celery:ForkPool",  # what a worker is given
                "processes": sorted(self._by_pid),
                "fork_from": "worker" if self._mold is None else f"mold (pid {self._mold.pid})",
                "tracking": {k: v for k, v in self._tracking.items() if k != "redis"},
            }
        )
        return info

    @property
    def num_processes(self) -> int:
        """How many children may run at once."""
        return int(self.limit)

    # --- the rest ---------------------------------------------------------------------

    def _running_executor(self) -> ForkPerTaskExecutor:
        if self._executor is None:
            msg = "ForkPool.on_apply() before on_start()"
            raise RuntimeError(msg)
        return self._executor

    def _before_fork(self, fn: object, args: object, kwargs: object) -> None:
        """In the supervisor thread: make sure the result backend exists in this thread.

        Celery keeps one backend object per thread, and a child runs in a copy of
        the thread that forked it: without one made here, every child would build
        its own (for Redis, 5.5 ms of a no-op task's life). Only the object is
        shared; its connections are made in each child, after fork.
        """
        del fn, args, kwargs
        _ = self.app.backend
        _locks.find()

    def _enter_child(self, fn: object, args: object, kwargs: object) -> None:
        del fn, args, kwargs
        _in_child.enter(self.node_name, self.app)

    def _forked(self, fn: Callable[..., Any], args: object, kwargs: object, pid: int) -> None:
        """In the supervisor thread, just after the fork: the task is accepted."""
        del args, kwargs
        job: _Job = unwrap(fn)  # type: ignore[assignment]
        job.pid = pid
        self._unforked.discard(job)
        self._by_pid[pid] = job  # only this thread adds and removes: no pid mix-ups
        self._callbacks.call(_accept, job, time.monotonic())
        if job.soft_timeout is not None:
            self._callbacks.call_later(job.soft_timeout, _soft_limit_reached, job)

    def _done(self, job: _Job) -> None:
        """The future's done-callback (the supervisor thread, for a forked task)."""
        self._unforked.discard(job)
        if job.pid is not None and self._by_pid.get(job.pid) is job:
            del self._by_pid[job.pid]
        self._callbacks.call(self._ended, job)
        self._free_slot()

    def _free_slot(self) -> None:
        """A task's slot is free: the worker may hand over its next request.

        Only a worker with an event loop has a semaphore (one without hands every
        request over at once); once the loop has closed, no request is handed over.
        """
        if self._semaphore is not None:
            self._slots_freed.append(None)
            self._wake_hub()

    def _on_hub_wakeup(self, fd: int) -> None:
        """In the worker's event loop: the pipe was written to."""
        _drain(fd)
        self._release_freed_slots()

    def _release_freed_slots(self) -> None:
        while True:
            try:
                self._slots_freed.popleft()
            except IndexError:
                return
            # May call the worker's next waiting request in: on_apply, right here.
            self._semaphore.release()

    def _ended(self, job: _Job) -> None:
        """In the callback thread: tell Celery how the task ended."""
        future = job.future
        assert future is not None  # noqa: S101 - set in on_apply
        if future.cancelled():
            return  # never forked (a shutdown): unacknowledged, the broker redelivers it
        error = future.exception()
        if error is None:
            _safely(job.callback, future.result())
        elif isinstance(error, TaskTimeoutError):
            # As billiard does: the failure, then the timeout handler (which logs it).
            _safely(job.error_callback, _exc_info(TimeLimitExceeded(job.timeout)))
            _safely(job.timeout_callback, soft=False, timeout=job.timeout)
        elif isinstance(error, ChildDiedError) and job.terminated_by is not None:
            _safely(job.error_callback, _exc_info(Terminated(error.signal or job.terminated_by)))
        elif (
            isinstance(error, ChildDiedError)
            and job.soft_limit_sent
            and error.signal == _in_child.SOFT_TIME_LIMIT_SIGNAL
        ):
            # The limit fell due before the child had installed its handler.
            _safely(job.error_callback, _exc_info(SoftTimeLimitExceeded()))
        elif isinstance(error, ChildDiedError):
            status = -error.signal if error.signal else error.exitcode
            how = "" if status is None else f" {human_status(status)}."
            lost = WorkerLostError(f"Worker exited prematurely:{how} ({error})")
            _safely(job.error_callback, _exc_info(lost))
        else:
            _safely(job.error_callback, _exc_info(error))

    def _shutdown_begins(self, sender: object = None, **_: object) -> None:
        """``worker_shutting_down``, in the worker's signal handler: let no queued task fork.

        Celery closes the pool only once its event loop wakes up, which may be when
        the next task ends; a task queued here must not be forked meanwhile. This
        runs inside a signal handler, so it only sets flags (the executor's, which its
        supervisor reads before every fork, so nothing is forked from now on), hands
        the cancelling to the callback thread and wakes the loop.
        """
        if self.node_name is not None and sender not in (None, self.node_name):
            return  # another worker's shutdown, in the same process
        self._closing = True
        if self._executor is not None:
            self._executor._refuse_forks()  # noqa: SLF001 - forkpool's own
        self._callbacks.call(self._cancel_unforked)
        self._wake_hub()

    def _refuse_forks_first_on(self, signums: tuple[int, ...]) -> None:
        """Make each shutdown signal stop the forking before Celery's handler runs.

        Celery's cold shutdown (SIGQUIT) stops the running tasks and the pool from
        its handler before it sends ``worker_shutting_down``: a task waiting for a
        slot would be forked into the slot a stopped task freed. Wrapping the
        handlers Celery installed (before the pool starts) closes that gap.
        """
        if threading.current_thread() is not threading.main_thread():
            return  # an embedded worker: the process's signals are not its own
        for signum in signums:
            previous = signal.getsignal(signum)
            if callable(previous):
                signal.signal(signum, functools.partial(self._signalled, previous))

    def _signalled(self, previous: Callable[..., Any], signum: int, frame: object) -> None:
        """A shutdown signal: no fork from now on (flags only), then Celery's handler."""
        self._closing = True
        if self._executor is not None:
            self._executor._refuse_forks()  # noqa: SLF001 - forkpool's own
        self._in_signal_handler += 1
        try:
            previous(signum, frame)
        finally:
            self._in_signal_handler -= 1

    def _shutdown_has_begun(self) -> bool:
        return self._closing  # a method: the signal handler may set it at any bytecode

    def _cancel_unforked(self) -> None:
        for job in list(self._unforked):
            if job.future is not None:
                job.future.cancel()  # False for one handed a slot: it runs

    def _finish(self) -> None:
        """After the executor is done: the last callbacks, then this worker's leftovers."""
        signals.worker_shutting_down.disconnect(self._shutdown_begins)
        self._callbacks.stop()
        self._close_mold()
        _metrics.stop(self._metrics_server)
        self._metrics_server = None
        self._kill_leftovers()
        # A cold shutdown stops the pool from its signal handler, then sets the flag
        # the loop looks at: wake the loop, or it sleeps on to its next timer.
        self._wake_hub()

    def _close_mold(self) -> None:
        mold, self._mold = self._mold, None
        if mold is not None:
            mold.close()

    def _wake_hub(self) -> None:
        # Under the lock: a descriptor closed meanwhile may be some other file's by now.
        with self._hub_wakeup_lock:
            if self._hub_wakeup is not None:
                with contextlib.suppress(BlockingIOError):  # full: already woken
                    os.write(self._hub_wakeup[1], b"\0")

    def _close_hub_wakeup(self, hub: Hub) -> None:
        """When the loop closes (it has unregistered every reader by then)."""
        del hub
        with self._hub_wakeup_lock:
            wakeup, self._hub_wakeup = self._hub_wakeup, None
            for fd in wakeup or ():
                os.close(fd)

    def _kill_leftovers(self) -> None:
        """``kill_all`` for this worker: what its children left behind, if tracked."""
        redis = self._tracking.get("redis")
        if redis is False or redis is None:
            return
        try:
            stopped = _reaper.kill_all(
                redis,
                host=self._tracking["host"],
                key_prefix=self._tracking["key_prefix"],
            )
        except Exception:
            logger.warning("could not stop this worker's leftover children", exc_info=True)
            return
        if stopped:
            logger.warning("stopped %d leftover child(ren) of this worker", stopped)


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _accept(job: _Job, accepted_at: float) -> None:
    _safely(job.accept_callback, job.pid, accepted_at)


def _soft_limit_reached(job: _Job) -> None:
    """In the callback thread, at the soft limit: as billiard, say so, then signal."""
    future = job.future
    if future is None or future.done():
        return
    _safely(job.timeout_callback, soft=True, timeout=job.soft_timeout)
    job.soft_limit_sent = True
    future.send_signal(_in_child.SOFT_TIME_LIMIT_SIGNAL)


def _exc_info(error: BaseException) -> ExceptionInfo:
    """Celery's failure handlers take an ExceptionInfo, which reads sys.exc_info()."""
    try:
        raise error  # noqa: TRY301 - ExceptionInfo needs a traceback, which only raising makes
    except BaseException:  # noqa: BLE001 - captured, not handled
        return ExceptionInfo()


def _safely(fn: Callable[..., Any] | None, *args: Any, **kwargs: Any) -> None:
    """Call one of Celery's callbacks: what it raises is logged, as billiard does."""
    if fn is None:
        return
    try:
        fn(*args, **kwargs)
    except Exception:
        logger.exception("Celery's pool callback %r raised", fn)
