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
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from distributed import WorkerPlugin

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
        self._executor = _KeyedExecutor(ForkPerTaskExecutor(**self.executor_kwargs))
        worker.executors[self.executor_name] = self._executor

    def transition(self, key: object, start: str, finish: str, **kwargs: Any) -> None:
        """A task Dask gave up on while it ran in a fork: stop its child."""
        del start, kwargs
        if finish in _UNWANTED and self._executor is not None:
            self._executor.cancel_key(key)

    def teardown(self, worker: Worker) -> None:
        """The worker is closing: its tasks are abandoned, so are their children."""
        del worker
        if self._executor is not None:
            self._executor.terminate_workers()
            self._executor.shutdown(wait=True)

    def __getstate__(self) -> dict[str, Any]:
        """What travels to the workers: the settings, never an executor."""
        return {**self.__dict__, "_executor": None}


class _KeyedExecutor(Executor):
    """A ForkPerTaskExecutor that knows which Dask task each future runs.

    Dask calls ``submit(run, task_spec, data, ...)`` for an executor that is not a
    thread pool; the task spec carries the key.
    """

    def __init__(self, executor: ForkPerTaskExecutor) -> None:
        self._executor = executor
        self._lock = threading.Lock()
        self._running: dict[object, ForkFuture[Any]] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ForkFuture[Any]:
        future = self._executor.submit(fn, *args, **kwargs)
        key = getattr(args[0], "key", None) if args else None
        if key is not None:
            with self._lock:
                self._running[key] = future
            future.add_done_callback(lambda _done: self._forget(key, future))
        return future

    def _forget(self, key: object, future: ForkFuture[Any]) -> None:
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]

    def cancel_key(self, key: object) -> None:
        with self._lock:
            future = self._running.pop(key, None)
        if future is not None:
            future.cancel()

    def terminate_workers(self) -> None:
        self._executor.terminate_workers()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait, cancel_futures=cancel_futures)
