"""Type-checks the public API as users see it (run by mypy --strict, never executed)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import forkpool
from forkpool import ChildDiedError, ForkFuture, ForkPerTaskExecutor, TaskTimeoutError

if TYPE_CHECKING:
    import concurrent.futures


@forkpool.options(timeout=30, kill_grace=1.0)
def double(x: int) -> int:
    return 2 * x


def hooks_and_results() -> None:
    def pre(fn: object, args: tuple[object, ...], kwargs: dict[str, object]) -> None: ...

    def post(fn: object, args: tuple[object, ...], kwargs: dict[str, object], pid: int) -> None:
        del pid

    with ForkPerTaskExecutor(
        max_workers=2, timeout=5.0, kill_grace=1, parent_pre_fork=pre, parent_post_fork=post
    ) as ex:
        future: ForkFuture[int] = ex.submit(double, 21)
        answer: int = future.result()
        pid: int | None = future.pid
        as_std: concurrent.futures.Future[int] = future
        doubled: list[int] = list(ex.map(double, [1, 2], chunksize=2))
        call_site: ForkFuture[int] = ex.submit(forkpool.options(timeout=None)(double), 1)
        ex.terminate_workers()
        ex.kill_workers()
        del answer, pid, as_std, doubled, call_site


def errors(error: ChildDiedError, timeout: TaskTimeoutError) -> tuple[int | None, float, str]:
    return error.signal, timeout.timeout, error.stopped_by


VERSION: str = forkpool.__version__


async def in_asyncio(ex: ForkPerTaskExecutor) -> int:
    return await asyncio.get_running_loop().run_in_executor(ex, double, 2)


async def awaited(ex: ForkPerTaskExecutor) -> int:
    value: int = await forkpool.run_async(ex, double, 2)
    await ex.aclose(cancel_futures=True)
    return value


def per_process() -> int:
    shared = forkpool.PerProcessExecutor(2, close_fds=True, pass_fds=[3])
    future: ForkFuture[int] = shared.submit(double, 1)
    shared.shutdown()
    return future.result()
