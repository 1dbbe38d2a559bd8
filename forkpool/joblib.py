"""A joblib backend that runs every batch of calls in a fresh fork: ``backend="forkpool"``.

Importing this module registers the backend::

    import forkpool.joblib  # registers "forkpool"
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="forkpool", n_jobs=4, timeout=600):
        results = Parallel()(delayed(build)(part) for part in parts)

Arguments joblib passes through (``parallel_config(backend="forkpool", ...)`` beyond
``n_jobs``) go to :class:`~forkpool.ForkPerTaskExecutor`: ``timeout``,
``kill_grace``, ``memory_limit``, ``redis``, the hooks. Calls are inherited through
fork, never pickled; only results come back. When a call fails, joblib aborts the
rest and their children are killed at once.

Needs the ``joblib`` extra: ``pip install 'forkpool[joblib]'``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from joblib import register_parallel_backend
from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from forkpool._executor import ForkPerTaskExecutor

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future

    from forkpool._future import ForkFuture

__all__ = ["ForkpoolBackend"]


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
        self._executor_kwargs = executor_kwargs
        self._executor: ForkPerTaskExecutor | None = None
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

        ``kwargs`` are Parallel's memory-mapping settings (``max_nbytes``,
        ``mmap_mode``, ``temp_folder``), which a fork has no use for: its children
        share the parent's arrays already.
        """
        del prefer, require, kwargs
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._executor = ForkPerTaskExecutor(n_jobs, **self._executor_kwargs)
        self.parallel = parallel
        return n_jobs

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Future[Any]], object] | None = None
    ) -> ForkFuture[Any]:
        """Run one batch of calls in a fresh child."""
        assert self._executor is not None  # noqa: S101 - joblib configures before it submits
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
        """A call failed: kill every running child and drop the queued batches."""
        if self._executor is not None:
            self._executor.kill_workers()
            self._executor.shutdown(wait=True)
            self._executor = None
        if ensure_ready:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)


register_parallel_backend("forkpool", ForkpoolBackend)
