"""``Executor.map`` with ``chunksize`` and ``buffersize``, on every supported Python.

Python 3.14 gave ``Executor.map`` a ``buffersize``: at most that many tasks are
submitted ahead of the results read, and the iterables are read only as results are
taken, so an endless iterable works. Older Pythons' ``Executor.map`` reads every
iterable at once. This module is 3.14's contract (its messages included) for every
Python forkpool supports, with ``chunksize`` on top: each chunk of calls is one
task, so ``buffersize`` counts chunks, as it does in ProcessPoolExecutor.
"""

from __future__ import annotations

import collections
import functools
import itertools
import time
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

from forkpool._options import TaskWithOptions, options_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from concurrent.futures import Executor, Future

T = TypeVar("T")


def check_map_arguments(chunksize: object, buffersize: object) -> None:
    """Raise as ProcessPoolExecutor.map does for a bad ``chunksize`` or ``buffersize``.

    Raises:
        ValueError: ``chunksize`` is below 1, or ``buffersize`` is below 1.
        TypeError: ``buffersize`` is neither an int nor None.
    """
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        msg = f"chunksize must be an int >= 1, got {chunksize!r}"
        raise ValueError(msg)
    # CPython's checks and messages, word for word (bool passes, as there).
    if buffersize is not None and not isinstance(buffersize, int):
        msg = "buffersize must be an integer or None"
        raise TypeError(msg)
    if buffersize is not None and buffersize < 1:
        msg = "buffersize must be None or > 0"
        raise ValueError(msg)


def map_in_children(
    executor: Executor,
    fn: Callable[..., T],
    iterables: tuple[Iterable[Any], ...],
    *,
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
) -> Iterator[T]:
    """Submit ``fn`` over ``iterables`` to ``executor``; return the results in order.

    Checked and submitted at the call (the first ``buffersize`` tasks, or all of
    them); the rest is submitted as results are taken. If ``timeout`` expires or
    the iterator is closed early, the tasks not yet done are cancelled.

    Raises:
        ValueError, TypeError: See :func:`check_map_arguments`.
    """
    check_map_arguments(chunksize, buffersize)
    calls: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
    if chunksize == 1:
        return _results(executor, fn, calls, timeout, buffersize)
    run_chunk = TaskWithOptions(functools.partial(_run_chunk, fn), options_of(fn))
    chunks = ((chunk,) for chunk in _batched(calls, chunksize))
    return _flatten(_results(executor, run_chunk, chunks, timeout, buffersize))


def _results(
    executor: Executor,
    fn: Callable[..., T],
    calls: Iterator[tuple[Any, ...]],
    timeout: float | None,
    buffersize: int | None,
) -> Iterator[T]:
    end_time = None if timeout is None else time.monotonic() + timeout
    futures: collections.deque[Future[T]] = collections.deque(
        executor.submit(fn, *args)
        for args in (itertools.islice(calls, buffersize) if buffersize else calls)
    )
    # Weak: the iterator must not keep a dropped executor alive (nor submit to it).
    executor_ref = weakref.ref(executor)
    del executor
    return _yield_in_order(
        futures, fn, calls, end_time=end_time, executor_ref=executor_ref, buffersize=buffersize
    )


def _yield_in_order(
    futures: collections.deque[Future[T]],
    fn: Callable[..., T],
    calls: Iterator[tuple[Any, ...]],
    *,
    end_time: float | None,
    executor_ref: weakref.ref[Executor],
    buffersize: int | None,
) -> Iterator[T]:
    # A generator of its own, so that everything above runs at the call, not at
    # the first next().
    try:
        while futures:
            if buffersize and (executor := executor_ref()) is not None:
                args = next(calls, None)
                if args is not None:
                    futures.append(executor.submit(fn, *args))
                del executor
            remaining = None if end_time is None else end_time - time.monotonic()
            yield _result_or_cancel(futures.popleft(), remaining)
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: Future[T], timeout: float | None) -> T:
    try:
        return future.result(timeout)
    finally:
        # A timed-out (or interrupted) wait stops its task; a done future is unmoved.
        future.cancel()
        del future  # no cycle through the exception's traceback


def _run_chunk(fn: Callable[..., T], chunk: tuple[tuple[Any, ...], ...]) -> list[T]:
    return [fn(*args) for args in chunk]


def _batched(iterable: Iterator[T], size: int) -> Iterator[tuple[T, ...]]:
    while batch := tuple(itertools.islice(iterable, size)):
        yield batch


def _flatten(chunks: Iterator[list[T]]) -> Iterator[T]:
    for chunk in chunks:
        yield from chunk
