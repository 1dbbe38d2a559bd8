"""A joblib backend that runs every batch of calls in a fresh fork: ``backend="forkpool"``.

Importing this module registers the backend::

    import forkpool.joblib  # registers "forkpool"
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="forkpool", n_jobs=4, timeout=600):
        results = Parallel()(delayed(build)(part) for part in parts)

:class:`~forkpool.ForkPerTaskExecutor`'s arguments (``timeout``, ``kill_grace``,
``memory_limit``, ``initializer``/``initargs``, ``redis``, the hooks...) may be given
to ``parallel_config(backend="forkpool", ...)`` or to ``Parallel(backend="forkpool",
...)``; an argument ``Parallel`` names wins. A name the executor does not take is a
``TypeError`` naming it. Calls are inherited through fork, never pickled; only
results come back. When a call fails, joblib aborts the rest and their children are
killed at once.

Thread pools of native libraries (BLAS, OpenMP) are limited in each child as joblib
promises for its process backends: to ``inner_max_num_threads``, else to
``cpu_count() // n_jobs``, unless the parent's environment already sets one of
joblib's thread-count variables. The libraries are loaded before the fork, so
environment variables alone would come too late: the child limits the loaded pools
with threadpoolctl.

Needs the ``joblib`` extra: ``pip install 'forkpool[joblib]'``.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from typing import TYPE_CHECKING, Any, Final

from joblib import register_parallel_backend
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from forkpool._executor import ForkPerTaskExecutor

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from concurrent.futures import Future

    from forkpool._future import ForkFuture

__all__ = ["ForkpoolBackend"]

# What Parallel passes to every backend's configure() for memory-mapping process
# pools (a fork shares the parent's arrays already) and for its own logging.
_JOBLIB_SETTINGS: Final = frozenset(
    {"max_nbytes", "temp_folder", "mmap_mode", "verbose", "context"}
)
# What the executor takes from joblib: all of its constructor but the pool size,
# which is n_jobs.
_EXECUTOR_ARGUMENTS: Final = frozenset(inspect.signature(ForkPerTaskExecutor).parameters) - {
    "max_workers"
}


def _executor_arguments(given: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(given) - _EXECUTOR_ARGUMENTS)
    if unknown:
        msg = (
            f"{where} got {', '.join(map(repr, unknown))}, which the forkpool backend does "
            f"not take; it takes ForkPerTaskExecutor's arguments: "
            f"{', '.join(sorted(_EXECUTOR_ARGUMENTS))}"
        )
        raise TypeError(msg)
    return dict(given)


class ForkpoolBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's backend protocol over a ForkPerTaskExecutor (one per ``Parallel`` call)."""

    supports_retrieve_callback = True
    supports_return_generator = True
    supports_inner_max_num_threads = True

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **executor_kwargs: Any,
    ) -> None:
        """Keep ``executor_kwargs`` for the executor each ``Parallel`` call makes."""
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._executor_kwargs = _executor_arguments(executor_kwargs, "parallel_config()")
        self._executor: ForkPerTaskExecutor | None = None
        self._thread_limit: _ThreadLimit | None = None
        self.parallel: Any = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many children run at once: joblib's conventions (-1 is every core)."""
        if n_jobs == 0:
            msg = "n_jobs == 0 in Parallel has no meaning"
            raise ValueError(msg)
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max((os.cpu_count() or 1) + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **kwargs: Any,
    ) -> int:
        """Make the executor of one ``Parallel`` call; one job runs in this process.

        ``kwargs`` are what ``Parallel`` was given beyond its own arguments (the
        executor's, which win over ``parallel_config``'s) and its memory-mapping
        settings, which a fork has no use for: its children share the parent's
        arrays already.
        """
        del prefer, require
        given = {name: value for name, value in kwargs.items() if name not in _JOBLIB_SETTINGS}
        executor_kwargs = self._executor_kwargs | _executor_arguments(given, "Parallel()")
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._executor = ForkPerTaskExecutor(n_jobs, **executor_kwargs)
        self._thread_limit = _ThreadLimit.for_children(self.inner_max_num_threads, n_jobs)
        self.parallel = parallel
        return n_jobs

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Future[Any]], object] | None = None
    ) -> ForkFuture[Any]:
        """Run one batch of calls in a fresh child."""
        assert self._executor is not None  # noqa: S101 - joblib configures before it submits
        if self._thread_limit is not None:
            func = functools.partial(self._thread_limit.run, func)
        future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: ForkFuture[Any]) -> Any:
        """The batch's results (or its exception)."""
        return future.result()

    def terminate(self) -> None:
        """The ``Parallel`` call is over: its children are all reaped by now."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call failed: kill every running child and drop the queued batches.

        With ``ensure_ready``, the next executor is made as the ``Parallel`` call
        made the first: with every argument it was given.
        """
        if self._executor is not None:
            self._executor.kill_workers()
            self._executor.shutdown(wait=True)
            self._executor = None
        if ensure_ready:
            self.configure(
                n_jobs=self.parallel.n_jobs,
                parallel=self.parallel,
                **self.parallel._backend_kwargs,  # noqa: SLF001 - as joblib's own backends do
            )


class _ThreadLimit:
    """How many threads each native pool may use in a child, and how to apply it there."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        # Made in the parent, which has loaded the libraries: the child inherits the
        # handles and only sets the limits (a few C calls, not a library scan).
        self._controller: Any = None
        try:
            from threadpoolctl import ThreadpoolController  # noqa: PLC0415 - only if used
        except ImportError:
            _warn_once_without_threadpoolctl()
        else:
            self._controller = ThreadpoolController()

    @classmethod
    def for_children(cls, inner_max_num_threads: int | None, n_jobs: int) -> _ThreadLimit | None:
        """The given limit, else cpu_count // n_jobs, unless the env sets one: joblib's rule."""
        if inner_max_num_threads is None:
            if any(var in os.environ for var in ParallelBackendBase.MAX_NUM_THREADS_VARS):
                return None  # the user's own setting, which the libraries read at load
            threads = max((os.cpu_count() or 1) // n_jobs, 1)
        else:
            threads = inner_max_num_threads
        return cls(threads)

    def run(self, func: Callable[[], Any]) -> Any:
        """In the child: limit the pools (and what the child starts), then the batch."""
        for var in ParallelBackendBase.MAX_NUM_THREADS_VARS:
            os.environ[var] = str(self.threads)
        if self._controller is not None:
            self._controller.limit(limits=self.threads)
        return func()


_warned_without_threadpoolctl = False


def _warn_once_without_threadpoolctl() -> None:
    global _warned_without_threadpoolctl  # noqa: PLW0603 - once per process
    if _warned_without_threadpoolctl:
        return
    _warned_without_threadpoolctl = True
    warnings.warn(
        "forkpool's joblib backend limits the children's BLAS and OpenMP threads with "
        "threadpoolctl, which is not installed: only the environment variables are set, "
        "which libraries loaded before the fork ignore. pip install 'forkpool[joblib]'",
        RuntimeWarning,
        stacklevel=4,
    )


register_parallel_backend("forkpool", ForkpoolBackend)
