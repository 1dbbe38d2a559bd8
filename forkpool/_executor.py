"""ForkPerTaskExecutor: a concurrent.futures executor that forks one child per task.

Data flow::

    caller threads                      supervisor thread (one per executor)
    --------------                      ------------------------------------
    submit(fn, *args) --> WorkItem --> pending deque --+
    future.cancel() ----> command deque ---------------+--> wake-up pipe
    shutdown() ---------> flag ------------------------+         |
                                                                  v
                                           epoll(timeout = nearest deadline)
                                           |            |              |
                                      wake-up pipe  result pipes     pidfds
                                           |            |              |
                                       dispatch:    read frames    reap (wait4),
                                       hooks, fork  as they        settle the
                                       (<= max_workers  arrive        future
                                        children)
    future.result() <------------------------------------------------+

    child process (one per task, its own process group)
    ---------------------------------------------------
    fork -> reset signals, PDEATHSIG -> child_post_fork -> initializer -> fn(*args)
         -> pickle the result (protocol 5) or exception -> its large buffers spliced
            into the result pipe, then one frame -> os._exit

submit() never pickles the callable or its arguments: the child inherits them. Only
the outcome crosses the pipe. The executor keeps no per-task thread, and the
supervisor holds the executor only weakly (through a finalizer), so a forgotten
executor is collected and its children stopped.

At interpreter exit, every executor's work is finished before any atexit handler
runs, as CPython's executors do (see ``_exit``), even after ``shutdown(wait=False)``
or once the executor itself is gone; Ctrl-C during that wait stops the children
instead. The exit hook and the finalizer hold the executor's :class:`_Runtime`,
never the executor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
import warnings
import weakref
from concurrent.futures import Executor, Future, InvalidStateError
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import attrs

from forkpool import _exit, _observe
from forkpool._async import wait_for_future
from forkpool._child import StopReason
from forkpool._entry import Keys
from forkpool._errors import ForkPoolError, TaskNotPicklableError, platform_error
from forkpool._future import ForkFuture
from forkpool._map import map_in_children
from forkpool._mold import Mold
from forkpool._options import (
    ResolvedOptions,
    check_close_fds,
    check_kill_grace,
    check_memory_limit,
    check_pass_fds,
    check_positive,
    check_timeout,
    require_callable,
    resolve,
    task_name,
)
from forkpool._slots import WorkItem
from forkpool._supervisor import Hooks, Supervisor, SupervisorConfig
from forkpool._tracking import TrackingContext, default_host, redis_asked_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType
    from typing import Self

    from redis import Redis
    from redis.cluster import RedisCluster
    from typing_extensions import ParamSpec

    from forkpool._bookkeeping import Bookkeeper
    from forkpool._redis import RedisSource

    P = ParamSpec("P")

T = TypeVar("T")

logger = logging.getLogger("forkpool")

# How long shutdown(wait=True) waits for the last Redis writes. Bounded: a dead
# Redis must not hold up a shutdown (the client's own timeouts and retries fit).
_BOOKKEEPING_CLOSE_WAIT = 10.0


class ForkPerTaskExecutor(Executor):
    """Runs every task in a freshly forked child process.

    A drop-in for :class:`concurrent.futures.ProcessPoolExecutor`: memory goes back to
    the OS when each task ends, global state dies with its child, a crash fails one
    future and never the pool, and callables and arguments are inherited through
    fork rather than pickled (lambdas, closures, locks and sockets all work).

    Args:
        max_workers: At most this many children run at once; the rest queue.
            Defaults to ``os.cpu_count()``.
        mp_context: Accepted for ProcessPoolExecutor compatibility; must be None or
            a ``"fork"`` context.
        initializer: Called in every child, with ``initargs``, before its task.
        initargs: Arguments for ``initializer``.
        max_tasks_per_child: Accepted for compatibility; must be None or 1.
        timeout: Default per-task timeout in seconds (None: no timeout). A task that
            outlives it has its process group stopped and fails with
            :class:`TaskTimeoutError`.
        kill_grace: Seconds between SIGTERM and SIGKILL when a task is stopped.
        parent_pre_fork: ``(fn, args, kwargs)``, in the supervisor thread, right
            before fork.
        parent_post_fork: ``(fn, args, kwargs, pid)``, in the supervisor thread,
            once the child's pid is known.
        child_post_fork: ``(fn, args, kwargs)``, inside the child, before the
            initializer and the task.
        redis: Where to track every child: a Redis URL (``redis://``,
            ``rediss://``, ``unix://``; ``redis+cluster://host:port,...`` for a
            Redis Cluster; ``redis+sentinel://host:port,.../service_name/db`` for
            Sentinel) or a ready ``redis.Redis`` (``Sentinel.master_for()``'s
            included) or ``redis.cluster.RedisCluster`` client. None: the
            ``FORKPOOL_REDIS_URL`` environment variable if set, else no Redis;
            False: no Redis, whatever that variable says.
        key_prefix: Prefix of the Redis keys (see the README for the layout).
        host: This machine's name in Redis; None: ``FORKPOOL_HOST`` if set and not
            blank, else ``socket.gethostname()``.
        ttl: Lease length of each child's entry, in seconds; renewed by the owner
            every ``reap_interval`` while the child runs. Must exceed
            ``2 * reap_interval``.
        reap_interval: Seconds between the Redis thread's cycles (renew own leases,
            reap orphans of dead executors on this host).
        memory_limit: Bytes of private memory each task may add beyond what its
            child inherited (``RLIMIT_DATA``: the heap, objects, buffers and
            copy-on-write mappings, not shared memory); past that the task gets
            ``MemoryError`` instead of meeting the OOM killer. None: no cap.
        close_fds: In each child, close every descriptor it inherited but stdin,
            stdout, stderr, its result pipe, what logging's handlers write to and
            ``pass_fds``. For servers: a child must not hold the listening socket,
            clients' connections or the event loop's epoll. (They are replaced by
            ``/dev/null``, not freed, so an inherited object that still holds a
            number can never close a descriptor the task opens later.)
        pass_fds: Descriptors children keep under ``close_fds``.
        mold: Fork every task from this :class:`Mold` instead of this process.
        name: The executor's name in metrics (the ``executor`` label); several
            executors may share one.

    Raises:
        ForkPoolError: The platform is not Linux.
        ValueError: An argument is out of range.
        TypeError: An argument has the wrong type.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        timeout: float | None = None,
        kill_grace: float = 5.0,
        parent_pre_fork: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], object]
        | None = None,
        parent_post_fork: Callable[
            [Callable[..., Any], tuple[Any, ...], dict[str, Any], int], object
        ]
        | None = None,
        child_post_fork: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], object]
        | None = None,
        redis: str | Redis | RedisCluster | Literal[False] | None = None,
        key_prefix: str = "forkpool",
        host: str | None = None,
        ttl: float = 900,
        reap_interval: float = 30,
        memory_limit: int | None = None,
        close_fds: bool = False,
        pass_fds: Iterable[int] = (),
        mold: Mold | None = None,
        name: str = "default",
    ) -> None:
        if (unsupported := platform_error()) is not None:
            raise unsupported
        if not isinstance(cast("object", name), str) or not name:
            msg = f"name must be a non-empty string, got {name!r}"
            raise ValueError(msg)
        self._name = name
        self._max_workers = _check_max_workers(max_workers)
        preload = _check_mp_context(mp_context)
        if not isinstance(cast("object", mold), Mold | None):
            msg = f"mold must be a forkpool.Mold or None, got {mold!r}"
            raise TypeError(msg)
        if mold is not None and preload is not None:
            msg = "give either mold or a forkserver/spawn mp_context, not both"
            raise ValueError(msg)
        if isinstance(max_tasks_per_child, bool) or max_tasks_per_child not in (None, 1):
            msg = (
                "max_tasks_per_child must be None or 1 (every task gets a fresh child), "
                f"got {max_tasks_per_child!r}"
            )
            raise ValueError(msg)
        for hook_name, hook in (
            ("initializer", initializer),
            ("parent_pre_fork", parent_pre_fork),
            ("parent_post_fork", parent_post_fork),
            ("child_post_fork", child_post_fork),
        ):
            if hook is not None:
                require_callable(hook, f"{hook_name} must be callable or None")
        _check_tuple(initargs, "initargs")
        self._reap_interval = check_positive(reap_interval, "reap_interval")
        self._defaults = ResolvedOptions(
            timeout=check_timeout(timeout),
            kill_grace=check_kill_grace(kill_grace),
            ttl=_check_ttl(ttl, self._reap_interval),
            memory_limit=check_memory_limit(memory_limit),
            close_fds=check_close_fds(close_fds),
            pass_fds=check_pass_fds(pass_fds),
        )
        self._config = SupervisorConfig(
            max_workers=self._max_workers,
            initializer=initializer,
            initargs=initargs,
            hooks=Hooks(parent_pre_fork, parent_post_fork, child_post_fork),
        )
        owned_mold = None if preload is None else Mold(preload=preload)
        self._mold = owned_mold or mold
        self._runtime = _Runtime(
            config=self._config,
            owner_pid=os.getpid(),
            name=name,
            mold=self._mold,
            owned_mold=owned_mold,
            **_start_tracking(
                redis,
                key_prefix=key_prefix,
                host=host,
                ttl=self._defaults.ttl,
                reap_interval=self._reap_interval,
                kill_grace=self._defaults.kill_grace,
                name=name,
            ),
        )
        _observe.add_executor(self._runtime)
        self._finalizer = weakref.finalize(self, self._runtime.abandon)
        self._finalizer.atexit = False
        _exit.register(self._runtime)

    def __repr__(self) -> str:
        if self._runtime.closed:
            state = "shut down"
        elif self._runtime.supervisor is None:
            state = "idle"
        else:
            state = "running"
        return f"<{type(self).__name__} max_workers={self._max_workers} {state}>"

    @property
    def max_workers(self) -> int:
        """The most children that run at once."""
        return self._max_workers

    @property
    def name(self) -> str:
        """The executor's name in metrics."""
        return self._name

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> ForkFuture[T]:
        """Schedule ``fn(*args, **kwargs)`` in a new child process.

        Returns:
            A :class:`ForkFuture` for the task's outcome.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: The executor is shut down, the interpreter is exiting, or
                this is a forked child of the process that created the executor.
            ForkPoolError: The supervisor thread failed earlier.
        """
        require_callable(fn, "submit() needs a callable as fn")
        self._check_owner()
        options = resolve(fn, self._defaults)
        if options.ttl != self._defaults.ttl:
            _check_ttl(options.ttl, self._reap_interval)
        accounting = None
        if _observe.observing():
            accounting = _observe.Accounting(
                executor=self._name,
                callable=task_name(fn),
                memory_limited=options.memory_limit is not None,
                timeout=options.timeout,
                submitted=time.monotonic(),
            )
            accounting.begin()  # in this thread: its trace context is the task's
        prelude = None if accounting is None else accounting.prelude
        pickled = None
        if self._mold is not None:
            try:
                pickled = _pickle_for_mold(fn, args, kwargs, self._config, prelude)
            except TaskNotPicklableError as exc:
                failed: ForkFuture[T] = ForkFuture()
                failed.set_exception(exc)
                return failed
        with self._runtime.lock:
            supervisor = self._runtime.usable_supervisor()
            future: ForkFuture[T] = ForkFuture()
            future._on_cancel = supervisor.cancel  # noqa: SLF001 - our own future
            future._on_wait_ended = supervisor.wait_ended  # noqa: SLF001
            future._on_signal = supervisor.send_signal  # noqa: SLF001
            if accounting is not None:
                future._accounting = accounting  # noqa: SLF001
                future.add_done_callback(accounting)
            supervisor.submit(WorkItem(future, fn, args, kwargs, options, pickled, prelude=prelude))
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Like :func:`map`, with each call (or chunk of calls) in its own child.

        ``chunksize`` calls run one after another in a single child. Results are
        yielded in order. Without ``buffersize`` the iterables are read at once and
        every task submitted; with it, at most ``buffersize`` tasks (chunks) are
        submitted ahead of the results taken, and the iterables are read only as
        results are taken, so they may be endless (Python 3.14's contract, on every
        Python). If ``timeout`` expires or the iterator is closed early, the tasks
        not yet done are cancelled, and their children stopped.

        Raises:
            ValueError: ``chunksize`` or ``buffersize`` is below 1.
            TypeError: ``buffersize`` is neither an int nor None.
            TimeoutError: A result was not ready within ``timeout`` of this call.

        .. versionchanged:: 0.2.0 ``buffersize``.
        """
        return map_in_children(
            self, fn, iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; optionally cancel the queued ones and wait.

        Without ``wait`` the running and queued tasks still finish, and the
        interpreter waits for them at exit.

        Args:
            wait: Block until every running and queued task has finished and its
                child has been reaped.
            cancel_futures: Cancel the tasks that have not started: those that
                found no free slot when they were submitted.
        """
        # Once shut down, dropping the executor must not stop its work.
        self._finalizer.detach()
        self._runtime.shutdown(wait=wait, cancel_futures=cancel_futures)

    async def aclose(self, *, cancel_futures: bool = False) -> None:
        """``shutdown(wait=True)`` without blocking the event loop (asyncio or trio).

        For an application's lifespan: awaits the running and queued tasks (and,
        with Redis, the last writes) while other tasks go on. Cancelled while it
        waits, it stops the children, as Ctrl-C in ``shutdown()`` does.
        """
        self.shutdown(wait=False, cancel_futures=cancel_futures)
        try:
            await wait_for_future(self._runtime.finished, cancel=False)
        except BaseException:
            self._runtime.interrupt()
            raise

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._runtime.interrupt()
        await self.aclose()

    def terminate_workers(self) -> None:
        """Send SIGTERM to every running child's process group, then shut down.

        Queued tasks are cancelled; running ones fail with :class:`ChildDiedError`
        naming the signal. A child still alive after ``kill_grace`` gets SIGKILL.
        Does not wait; call ``shutdown()`` to wait for the children to be reaped.
        """
        self._stop_workers(signal.SIGTERM, StopReason.TERMINATED)

    def kill_workers(self) -> None:
        """Send SIGKILL to every running child's process group, then shut down.

        Like :meth:`terminate_workers`, without the grace period.
        """
        self._stop_workers(signal.SIGKILL, StopReason.KILLED)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # The user pressed Ctrl-C: the children have no reason to run on.
            self._runtime.interrupt()
        self.shutdown(wait=True)

    def __del__(self) -> None:
        # The finalizer (_Runtime.abandon) stops the threads; this only says so.
        runtime = getattr(self, "_runtime", None)
        if runtime is not None and not runtime.closed and runtime.alive:
            warnings.warn(
                f"{type(self).__name__} was garbage-collected without shutdown(); "
                "its running children are being stopped and queued tasks cancelled",
                ResourceWarning,
                stacklevel=2,
            )

    # --- internals ---------------------------------------------------------------------

    def _check_owner(self) -> None:
        # Checked before taking the runtime's lock: a child forked while another
        # thread of the parent held that lock inherits it held, forever.
        owner = self._runtime.owner_pid
        if os.getpid() != owner:
            msg = (
                f"this executor belongs to process {owner}; a forked child "
                f"({os.getpid()}) must create its own (a forkpool.PerProcessExecutor "
                "makes one in each process that uses it)"
            )
            raise RuntimeError(msg)

    def _refuse_forks(self) -> None:
        """Fork no task from now on (running ones go on); safe in a signal handler.

        For a host whose shutdown begins in a signal handler (Celery's): what was
        not forked by then is cancelled as its turn comes, never forked late.
        """
        self._runtime.refusing_forks = True
        supervisor = self._runtime.supervisor
        if supervisor is not None:
            supervisor.refuse_forks()

    def _stop_workers(self, signum: int, reason: StopReason) -> None:
        self._runtime.stop_all(signum, reason)
        self.shutdown(wait=False)


@attrs.define(eq=False)
class _Runtime:
    """The executor's state and threads, held apart from it.

    The exit hook and the finalizer reference this, never the executor: the
    finalizer must not keep the executor alive, and the exit hook must still wait
    for work the executor left behind when it was dropped.
    """

    config: SupervisorConfig
    owner_pid: int
    # The executor's name= (metrics count children by it while this lives).
    name: str = "default"
    # Where children come from: a mold's forks, or (None) this process's own.
    mold: Mold | None = None
    # The mold the executor made itself (for a forkserver mp_context), closed with it.
    owned_mold: Mold | None = None
    tracking: TrackingContext | None = None
    bookkeeper: Bookkeeper | None = None
    supervisor: Supervisor | None = None
    # Guards the flags and the supervisor's creation.
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    closed: bool = False
    exiting: bool = False
    refusing_forks: bool = False
    # Done once shut down and idle: every task ended, the last Redis writes made.
    finished: Future[None] = attrs.field(factory=Future)

    def running_children(self) -> int:
        """Children forked and not yet reaped (for metrics, from any thread)."""
        supervisor = self.supervisor
        return 0 if supervisor is None else supervisor.running

    @property
    def alive(self) -> bool:
        """A thread of the executor is still running."""
        return (self.supervisor is not None and self.supervisor.alive) or (
            self.bookkeeper is not None and self.bookkeeper.alive
        )

    def usable_supervisor(self) -> Supervisor:
        """Return the running supervisor, starting it on first use (lock held)."""
        supervisor = self.supervisor
        if supervisor is not None and supervisor.failure is not None:
            msg = "the executor's supervisor thread failed; no new tasks can run"
            raise ForkPoolError(msg) from supervisor.failure
        if self.exiting or sys.is_finalizing():
            msg = "cannot schedule new futures after interpreter shutdown"
            raise RuntimeError(msg)
        if self.closed:
            msg = "cannot schedule new futures after shutdown"
            raise RuntimeError(msg)
        if supervisor is None:
            supervisor = self.supervisor = Supervisor(
                self.config,
                tracking=self.tracking,
                bookkeeper=self.bookkeeper,
                on_finished=self._supervisor_finished,
                spawner=None if self.mold is None else self.mold.spawner(),
            )
            if self.refusing_forks:
                supervisor.refuse_forks()
            supervisor.start()
        return supervisor

    def shutdown(self, *, wait: bool, cancel_futures: bool) -> None:
        """Close to new work; cancel what has not started if asked; wait if asked."""
        with self.lock:
            self.closed = True
            supervisor = self.supervisor
        if supervisor is None:
            self._close_bookkeeper(wait=wait)
            self._finish()
            return
        if cancel_futures:
            supervisor.cancel_pending()
        supervisor.begin_shutdown()  # once done, its thread calls _supervisor_finished
        if wait:
            self._join(supervisor)
            self._finish()

    def stop_all(self, signum: int, reason: StopReason) -> None:
        """Close to new work, cancel what has not been forked, signal every child."""
        with self.lock:
            self.closed = True
            supervisor = self.supervisor
        if supervisor is not None:
            supervisor.cancel_pending(started_too=True)
            supervisor.stop_all(signum, reason)

    def interrupt(self) -> None:
        """Ctrl-C: the children have no reason to run on."""
        self.stop_all(signal.SIGTERM, StopReason.INTERRUPTED)

    def _join(self, supervisor: Supervisor) -> None:
        try:
            supervisor.join()
        except KeyboardInterrupt:
            # Ctrl-C while waiting: stop the children, wait for their reaping
            # (bounded by kill_grace), and let the interrupt go on.
            self.interrupt()
            supervisor.join()
            raise

    def _supervisor_finished(self) -> None:
        """In the supervisor thread, as it ends: the last Redis writes, then idle."""
        self._close_bookkeeper(wait=True)
        if self.closed:
            self._finish()

    def _finish(self) -> None:
        """Shut down and idle: exit need not wait, and aclose() may return."""
        if self.owned_mold is not None:
            self.owned_mold.close()
        _exit.forget(self)
        with contextlib.suppress(InvalidStateError):  # another thread got here first
            self.finished.set_result(None)

    def _close_bookkeeper(self, *, wait: bool) -> None:
        bookkeeper = self.bookkeeper
        if bookkeeper is None:
            return
        if not bookkeeper.close(timeout=_BOOKKEEPING_CLOSE_WAIT if wait else 0) and wait:
            logger.warning(
                "forkpool's Redis thread did not finish within %ss; the last %d "
                "removal(s) may not have been written",
                _BOOKKEEPING_CLOSE_WAIT,
                bookkeeper.pending[1],
            )

    # --- interpreter exit (see _exit) -------------------------------------------------

    def close_for_exit(self, *, interrupted: bool) -> None:
        """Refuse new work from now on; stop the children if Ctrl-C ended the program."""
        if os.getpid() != self.owner_pid:
            return  # a forked copy of the program is exiting; the work is not its
        with self.lock:
            self.exiting = True
        if interrupted:
            self.interrupt()

    def wait_for_exit(self) -> None:
        """Finish the work like the stdlib: running and queued tasks alike."""
        if os.getpid() == self.owner_pid:
            self.shutdown(wait=True, cancel_futures=False)

    def abandon(self) -> None:
        """The executor was dropped without shutdown(): stop everything."""
        if os.getpid() != self.owner_pid:
            return  # a forked copy of the program dropped its copy: its threads are not here
        _exit.forget(self)
        if self.supervisor is not None:
            self.supervisor.abandon()  # its thread closes the bookkeeper when done
        elif self.bookkeeper is not None:
            self.bookkeeper.close(timeout=0)


def _start_tracking(
    redis: object,
    *,
    key_prefix: str,
    host: str | None,
    ttl: float,
    reap_interval: float,
    kill_grace: float,
    name: str,
) -> dict[str, Any]:
    """Validate the Redis settings; start the bookkeeping thread if Redis is asked for."""
    if not isinstance(key_prefix, str) or not key_prefix:
        msg = f"key_prefix must be a non-empty string, got {key_prefix!r}"
        raise ValueError(msg)
    if "{" in key_prefix or "}" in key_prefix:
        msg = (
            f"key_prefix must not contain braces (a hash tag in it would put every "
            f"host's keys in one Redis Cluster slot), got {key_prefix!r}"
        )
        raise ValueError(msg)
    host = default_host() if host is None else _check_host(host)
    source = redis_source(redis, reap_interval=reap_interval)
    if source is None:
        return {}
    from forkpool._bookkeeping import Bookkeeper  # noqa: PLC0415 - see redis_source

    tracking = TrackingContext.create(Keys(key_prefix, host), executor_id=uuid.uuid4().hex)
    bookkeeper = Bookkeeper(
        source, tracking, ttl=ttl, reap_interval=reap_interval, kill_grace=kill_grace, name=name
    )
    bookkeeper.start()
    return {"tracking": tracking, "bookkeeper": bookkeeper}


def redis_source(value: object, *, reap_interval: float) -> RedisSource | None:
    """``resolve_redis``, with redis-py imported only if Redis is asked for (see _tracking).

    Raises:
        ValueError, TypeError: As ``resolve_redis``.
    """
    if redis_asked_for(value) is None:
        return None
    from forkpool._redis import resolve_redis  # noqa: PLC0415 - the point of this function

    return resolve_redis(value, reap_interval=reap_interval)


def _check_host(host: object) -> str:
    if not isinstance(host, str) or not host.strip():
        msg = f"host must be a non-blank string or None, got {host!r}"
        raise ValueError(msg)
    if "{" in host or "}" in host:
        msg = f"host must not contain braces (they delimit its Redis hash tag), got {host!r}"
        raise ValueError(msg)
    return host.strip()


def _check_ttl(ttl: object, reap_interval: float) -> float:
    seconds = check_positive(ttl, "ttl")
    if seconds <= 2 * reap_interval:
        msg = (
            f"ttl ({seconds:g}s) must be greater than twice reap_interval "
            f"(2 x {reap_interval:g}s = {2 * reap_interval:g}s): leases are renewed "
            "once per reap_interval"
        )
        raise ValueError(msg)
    return seconds


def _check_tuple(value: object, name: str) -> None:
    if not isinstance(value, tuple):
        msg = f"{name} must be a tuple, got {type(value).__name__}"
        raise TypeError(msg)


def _check_max_workers(max_workers: object) -> int:
    if max_workers is None:
        return os.cpu_count() or 1
    if isinstance(max_workers, bool) or not isinstance(max_workers, int):
        msg = f"max_workers must be an int or None, got {type(max_workers).__name__}"
        raise TypeError(msg)
    if max_workers <= 0:
        msg = f"max_workers must be greater than 0, got {max_workers}"
        raise ValueError(msg)
    return max_workers


def _check_mp_context(mp_context: object) -> tuple[str, ...] | None:
    """None for a fork context (or none); a forkserver's or spawn's preload for a mold."""
    if mp_context is None:
        return None
    get_start_method = getattr(mp_context, "get_start_method", None)
    if not callable(get_start_method):
        msg = (
            "mp_context must be None or a multiprocessing context "
            f"(multiprocessing.get_context('fork')); got {mp_context!r}, which is not "
            "a context"
        )
        raise TypeError(msg)
    method = get_start_method(allow_none=False)
    if method == "fork":
        return None
    if method in {"forkserver", "spawn"}:
        # The executor gets a mold of its own: a fresh interpreter that preloads
        # what multiprocessing's forkserver would (its preload list is private).
        import multiprocessing.forkserver  # noqa: PLC0415

        server = multiprocessing.forkserver._forkserver  # noqa: SLF001
        preload = getattr(server, "_preload_modules", None) or ["__main__"]
        return ("__main__",) if method == "spawn" else tuple(preload)
    msg = f"mp_context's start method must be fork, forkserver or spawn; got {method!r}"
    raise ValueError(msg)


def _pickle_for_mold(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    config: SupervisorConfig,
    prelude: Callable[[], object] | None,
) -> bytes:
    """The task as it travels to a mold: what the child unpickles and runs."""
    import cloudpickle  # noqa: PLC0415 - a runtime dependency, only needed here

    payload = (
        fn,
        args,
        kwargs,
        config.hooks.child_post_fork,
        config.initializer,
        config.initargs,
        prelude,
    )
    try:
        pickled: bytes = cloudpickle.dumps(payload, protocol=5)
    except Exception as exc:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        msg = (
            f"the task {name}() cannot be sent to its mold: its callable, its arguments, "
            f"or the executor's initializer, initargs or child_post_fork do not pickle "
            f"({type(exc).__name__}: {exc}). A mold's children inherit nothing of this "
            "process; without mold=, children are forked from it and inherit everything"
        )
        raise TaskNotPicklableError(msg) from exc
    return pickled
