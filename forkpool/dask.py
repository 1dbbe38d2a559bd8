"""A Dask worker plugin: tasks annotated ``executor="forked"`` run in fresh forks.

::

    import dask
    from forkpool.dask import ForkedExecutorPlugin

    client.register_plugin(ForkedExecutorPlugin(max_workers=2, timeout=600))
    with dask.annotate(executor="forked"):
        future = client.submit(build_report, account)

The plugin is pickled to each worker and makes its executor there, in the worker's
own process (an executor cannot be pickled, and belongs to the process that made
it), so it works with ``processes=True`` too. When Dask cancels a task that runs in
a fork (``client.cancel``, a lost dependency, a closing worker), its child is
stopped: SIGTERM, then SIGKILL after the kill grace. Arguments other than ``name``
go to :class:`~forkpool.ForkPerTaskExecutor`.

Needs the ``dask`` extra: ``pip install 'forkpool[dask]'``.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

import attrs
from distributed import WorkerPlugin

from forkpool._errors import ForkPoolError
from forkpool._executor import ForkPerTaskExecutor

if TYPE_CHECKING:
    from collections.abc import Callable

    from distributed import Worker

    from forkpool._future import ForkFuture

__all__ = ["ForkedExecutorPlugin"]

# Worker states in which a task that ran here is no longer wanted.
_UNWANTED = frozenset({"cancelled", "released", "forgotten"})


class ForkedExecutorPlugin(WorkerPlugin):
    """Adds ``worker.executors[name]``, a ForkPerTaskExecutor, to each worker."""

    def __init__(self, name: str = "forked", **executor_kwargs: Any) -> None:
        """Name the executor (``dask.annotate(executor=name)``); keep its settings."""
        self.name = f"forkpool-{name}"
        self.executor_name = name
        self.executor_kwargs = executor_kwargs
        self._executor: _KeyedExecutor | None = None

    def setup(self, worker: Worker) -> None:
        """In the worker's process: make the executor and offer it to its tasks."""
        self._executor = _KeyedExecutor(
            ForkPerTaskExecutor(**self.executor_kwargs), worker.loop.add_callback
        )
        worker.executors[self.executor_name] = self._executor

    def transition(self, key: object, start: str, finish: str, **kwargs: Any) -> None:
        """A task Dask gave up on while it ran in a fork: stop its child; or resumed."""
        del kwargs
        if self._executor is None:
            return
        if finish in _UNWANTED:
            self._executor.cancel_key(key)
        elif start == "cancelled":
            self._executor.resume_key(key)

    def teardown(self, worker: Worker) -> None:
        """The worker is closing: its tasks are abandoned, so are their children."""
        del worker
        if self._executor is not None:
            self._executor.terminate_workers()
            self._executor.shutdown(wait=True)

    def __getstate__(self) -> dict[str, Any]:
        """What travels to the workers: the settings, never an executor."""
        return {**self.__dict__, "_executor": None}


@attrs.define(eq=False)
class _Run:
    """One Dask task given to forkpool: the call, and the future Dask awaits."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    # What Dask awaits: it stays pending until the task's outcome is decided, so
    # that Dask cancelling its wait (a closing worker) reaches it.
    outer: Future[Any] = attrs.field(factory=Future)
    child: ForkFuture[Any] | None = None
    # Dask gave up on the task and its child was stopped; Dask then wanted it again.
    stopped: bool = False
    resumed: bool = False


class _KeyedExecutor(Executor):
    """A ForkPerTaskExecutor that knows which Dask task each future runs.

    Dask calls ``submit(run, task_spec, data, ...)`` for an executor that is not a
    thread pool; the task spec carries the key.

    Dask cannot stop a task it has given up on (``client.cancel``): it marks it
    cancelled and waits for the call to end, and if the task is asked for again
    meanwhile, it resumes waiting on the same call. Here the task's child is
    stopped at once, and the call Dask waits on ends with an error (an ``Exception``,
    which Dask takes as the task's failure and moves on from; a ``CancelledError``
    would leave the worker waiting for good). Unless Dask resumed the task before
    then: then the task runs again in a new child, and Dask gets its value. Which of
    the two happens is decided in the worker's event loop, where Dask's own
    decisions are made, so a resumption Dask has seen is never missed.
    """

    def __init__(
        self, executor: ForkPerTaskExecutor, call_in_loop: Callable[[Callable[[], None]], None]
    ) -> None:
        self._executor = executor
        self._call_in_loop = call_in_loop
        self._lock = threading.Lock()
        self._runs: dict[object, _Run] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        run = _Run(fn, args, kwargs)
        key = getattr(args[0], "key", None) if args else None
        if key is not None:
            with self._lock:
                self._runs[key] = run
        run.outer.add_done_callback(lambda outer: self._abandoned(run, outer))
        self._start(key, run)
        return run.outer

    def _start(self, key: object, run: _Run) -> None:
        child = run.child = self._executor.submit(run.fn, *run.args, **run.kwargs)
        child.add_done_callback(lambda _: self._call_in_loop(lambda: self._ended(key, run)))

    def _ended(self, key: object, run: _Run) -> None:
        """In the worker's event loop: the child ended; Dask gets its outcome, or a rerun."""
        child = run.child
        assert child is not None  # noqa: S101 - set before its callback
        with self._lock:
            again = run.stopped and run.resumed and not run.outer.done()
            run.stopped = run.resumed = False
            if not again and self._runs.get(key) is run:
                del self._runs[key]
        if run.outer.done():
            return  # Dask stopped waiting (a closing worker)
        if again:
            self._start(key, run)
        elif child.cancelled():
            run.outer.set_exception(
                ForkPoolError(f"Dask gave up on task {key!r}; its child was stopped")
            )
        elif (error := child.exception(timeout=0)) is not None:
            run.outer.set_exception(error)
        else:
            run.outer.set_result(child.result(timeout=0))

    @staticmethod
    def _abandoned(run: _Run, outer: Future[Any]) -> None:
        if outer.cancelled() and run.child is not None:
            run.child.cancel()

    def cancel_key(self, key: object) -> None:
        """Dask gave up on ``key``: stop its child (the wait ends in _ended)."""
        with self._lock:
            run = self._runs.get(key)
            if run is None or run.child is None or run.child.done():
                return
            run.stopped = True
            run.resumed = False
            child = run.child
        child.cancel()

    def resume_key(self, key: object) -> None:
        """Dask wants ``key`` again while its stopped call has not ended: rerun it."""
        with self._lock:
            run = self._runs.get(key)
            if run is not None and run.stopped:
                run.resumed = True

    def terminate_workers(self) -> None:
        self._executor.terminate_workers()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait, cancel_futures=cancel_futures)
