"""PerProcessExecutor: a ForkPerTaskExecutor of its own for every process that uses it.

Programs that fork their workers -- Celery's prefork pool, gunicorn, multiprocessing
with fork -- import a module once, in the parent, and every worker inherits its
objects. A ForkPerTaskExecutor belongs to the process that made it: its threads do
not exist in a fork, so a module-level one fails in every worker ("this executor
belongs to process ..."). A PerProcessExecutor holds only the settings. Each process
that submits to it gets a ForkPerTaskExecutor of its own, made there on first use;
one inherited from a parent is left alone (its threads are the parent's).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

from forkpool._executor import ForkPerTaskExecutor, redis_source

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType
    from typing import Self

    from typing_extensions import ParamSpec

    from forkpool._future import ForkFuture

    P = ParamSpec("P")

T = TypeVar("T")


class PerProcessExecutor(Executor):
    """Like :class:`ForkPerTaskExecutor`, made anew in each process that uses it.

    Takes exactly ForkPerTaskExecutor's arguments, checked at once; nothing starts
    (no thread, no Redis connection) until a process submits its first task::

        # tasks.py, imported by the gunicorn master or Celery's main process
        EXECUTOR = forkpool.PerProcessExecutor(max_workers=2, timeout=300)

        def handler(request):  # in any worker
            return EXECUTOR.submit(render_pdf, request.id).result()

    ``shutdown()`` shuts down this process's executor, if it has one. At
    interpreter exit each process's executor finishes its work, as any does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The same checks as ForkPerTaskExecutor's, by building one that starts
        # nothing: without Redis it starts no thread before its first task.
        ForkPerTaskExecutor(*args, **{**kwargs, "redis": False}).shutdown()
        redis_source(kwargs.get("redis"), reap_interval=kwargs.get("reap_interval", 30))
        self._args = args
        self._kwargs = kwargs
        self._made: dict[int, ForkPerTaskExecutor] = {}
        # One lock per process: a lock inherited through fork may be held forever.
        self._locks: dict[int, threading.Lock] = {}

    def __repr__(self) -> str:
        current = self._made.get(os.getpid())
        state = "not used in this process yet" if current is None else repr(current)
        return f"<{type(self).__name__}: {state}>"

    @property
    def executor(self) -> ForkPerTaskExecutor:
        """This process's ForkPerTaskExecutor, made now if it has none yet."""
        pid = os.getpid()
        made = self._made.get(pid)
        if made is not None:
            return made
        with self._locks.setdefault(pid, threading.Lock()):
            made = self._made.get(pid)
            if made is None:
                made = self._made[pid] = ForkPerTaskExecutor(*self._args, **self._kwargs)
        return made

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> ForkFuture[T]:
        """:meth:`ForkPerTaskExecutor.submit` on this process's executor."""
        return self.executor.submit(fn, *args, **kwargs)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """:meth:`ForkPerTaskExecutor.map` on this process's executor."""
        return self.executor.map(
            fn, *iterables, timeout=timeout, chunksize=chunksize, buffersize=buffersize
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut down this process's executor, if it made one; a later submit makes another."""
        made = self._made.pop(os.getpid(), None)
        if made is not None:
            made.shutdown(wait, cancel_futures=cancel_futures)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        made = self._made.get(os.getpid())
        if made is not None:
            made.__exit__(exc_type, exc_val, exc_tb)
            self._made.pop(os.getpid(), None)
