"""Awaiting forkpool from asyncio and trio, and so from anyio on either.

No thread waits: the future's done-callback, which runs in forkpool's supervisor
thread, wakes the event loop through the one door each loop keeps open to other
threads (asyncio's ``call_soon_threadsafe``, trio's ``TrioToken.run_sync_soon``).
Cancelling the awaiting task cancels the future, which stops the child.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Executor, Future

    from typing_extensions import ParamSpec

    P = ParamSpec("P")

T = TypeVar("T")


async def run_async(
    executor: Executor, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run ``fn(*args, **kwargs)`` on ``executor`` and await its result.

    Works under asyncio and trio (so under anyio with either backend). Cancelling
    the awaiting task (a timeout, a cancel scope, a lifespan ending) cancels the
    task: a running child is stopped, SIGTERM then SIGKILL after its kill grace.

    Raises:
        RuntimeError: Not awaited in an asyncio or trio event loop.
    """
    future = executor.submit(fn, *args, **kwargs)
    return await wait_for_future(future)


async def wait_for_future(future: Future[T], *, cancel: bool = True) -> T:
    """Await a :class:`concurrent.futures.Future` from asyncio or trio.

    With ``cancel``, a wait that ends in an exception (cancellation included)
    cancels the future. Without it, the future is left as it is, so it can be
    awaited again: asyncio's ``wrap_future`` would cancel it with the wait, so the
    wait is on a stand-in that the future completes.
    """
    try:
        if _async_library() == "trio":
            await _wait_trio(future)
        else:
            import asyncio  # noqa: PLC0415 - loaded already: this runs in its event loop

            if cancel:
                await asyncio.wrap_future(future)
            else:
                await asyncio.wrap_future(_stand_in(future))
    except BaseException:
        if cancel:
            future.cancel()
        raise
    return future.result(timeout=0)


def _stand_in(future: Future[T]) -> Future[None]:
    """A future done when ``future`` is, whose cancelling leaves ``future`` alone."""
    stand_in: Future[None] = concurrent.futures.Future()

    def done(_: Future[T]) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled
            stand_in.set_result(None)

    future.add_done_callback(done)
    return stand_in


async def _wait_trio(future: Future[Any]) -> None:
    import trio  # noqa: PLC0415 - only when running under trio

    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_future: Future[Any]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the run is over: nobody waits
            token.run_sync_soon(done.set)

    future.add_done_callback(wake)
    await done.wait()


def _async_library() -> str:
    try:
        import sniffio  # noqa: PLC0415 - anyio's and trio's dependency, optional here
    except ImportError:
        pass
    else:
        with contextlib.suppress(sniffio.AsyncLibraryNotFoundError):
            return str(sniffio.current_async_library())
    # Not imported here: a program that never loaded asyncio runs no asyncio loop
    # (and forkpool's import, which molds pay for, stays small).
    asyncio = sys.modules.get("asyncio")
    msg = "forkpool's async helpers must be awaited in an asyncio or trio event loop"
    if asyncio is None:
        raise RuntimeError(msg)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(msg) from None
    return "asyncio"
