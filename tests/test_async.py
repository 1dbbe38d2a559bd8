"""run_async and aclose under asyncio, trio and anyio (on both of its backends)."""

from __future__ import annotations

import asyncio
import os
import time

import anyio
import pytest
import trio
from helpers import wait_gone

import forkpool
from forkpool import ForkPerTaskExecutor

BACKENDS = ["asyncio", "trio"]


def _nap(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def _announce_then_nap(path: str, seconds: float) -> None:
    with open(path, "w") as out:  # noqa: PTH123 - a child's one write
        out.write(str(os.getpid()))
    time.sleep(seconds)


def _fail() -> None:
    message = "from the task"
    raise LookupError(message)


class TestRunAsync:
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_results_and_errors_through_anyio(self, backend):
        """run_async returns a task's result and raises its exception, on either backend."""

        async def main() -> tuple[object, str]:
            with ForkPerTaskExecutor(2) as ex:
                value = await forkpool.run_async(ex, _nap, 0.1, "done")
                try:
                    await forkpool.run_async(ex, _fail)
                except LookupError as exc:
                    return value, str(exc)
            return value, "no error"

        assert anyio.run(main, backend=backend) == ("done", "from the task")

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_a_cancelled_wait_stops_the_child(self, backend, tmp_path):
        """A cancel scope ending the wait stops the task's child, on either backend."""
        pid_file = tmp_path / "pid"

        async def main() -> float:
            with ForkPerTaskExecutor(1, kill_grace=1) as ex:
                started = time.monotonic()
                with anyio.move_on_after(0.5):
                    await forkpool.run_async(ex, _announce_then_nap, str(pid_file), 30)
                return time.monotonic() - started

        elapsed = anyio.run(main, backend=backend)
        assert elapsed < 2
        wait_gone(int(pid_file.read_text()), timeout=5)

    def test_plain_asyncio_wait_for(self, tmp_path):
        """asyncio.wait_for around run_async stops the child at the timeout."""
        pid_file = tmp_path / "pid"

        async def main() -> None:
            with ForkPerTaskExecutor(1) as ex, pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(
                    forkpool.run_async(ex, _announce_then_nap, str(pid_file), 30), 0.5
                )

        asyncio.run(main())
        wait_gone(int(pid_file.read_text()), timeout=5)

    def test_plain_trio(self):
        """Under trio itself, without anyio, run_async awaits results."""

        async def main() -> list[object]:
            with ForkPerTaskExecutor(2) as ex:
                results: list[object] = []
                async with trio.open_nursery() as nursery:
                    for n in range(4):
                        nursery.start_soon(_collect, ex, n, results)
                return sorted(results)  # type: ignore[type-var]

        async def _collect(ex: ForkPerTaskExecutor, n: int, results: list[object]) -> None:
            results.append(await forkpool.run_async(ex, _nap, 0.05, n))

        assert trio.run(main) == [0, 1, 2, 3]

    def test_outside_an_event_loop(self):
        """run_async outside asyncio or trio says where it must run."""
        with ForkPerTaskExecutor(1) as ex:
            coroutine = forkpool.run_async(ex, pow, 2, 2)
            with pytest.raises(RuntimeError, match="asyncio or trio event loop"):
                coroutine.send(None)


async def _cancel_aclose_while_a_child_runs(
    ex: ForkPerTaskExecutor,
) -> forkpool.ForkFuture[object]:
    """Start a 30 s task, wait for its fork, then cancel an aclose() after 0.3 s."""
    future = ex.submit(_nap, 30)
    while future.pid is None:  # noqa: ASYNC110 - forked within milliseconds
        await anyio.sleep(0.01)
    with anyio.move_on_after(0.3):
        await ex.aclose()
    return future


class TestAclose:
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_aclose_waits_without_blocking_the_loop(self, backend):
        """aclose awaits the running tasks while the event loop keeps serving others."""

        async def main() -> tuple[int, object]:
            ex = ForkPerTaskExecutor(1)
            future = ex.submit(_nap, 1.0, "finished")
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await anyio.sleep(0.05)

            async with anyio.create_task_group() as group:
                group.start_soon(tick)
                await ex.aclose()
                group.cancel_scope.cancel()
            return ticks, future.result(timeout=0)

        ticks, result = anyio.run(main, backend=backend)
        assert result == "finished"
        assert ticks >= 10  # the loop ran all along the 1 s wait

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_a_cancelled_aclose_stops_the_children(self, backend):
        """aclose cancelled while it waits stops the children, as Ctrl-C would."""

        async def main() -> forkpool.ForkFuture[object]:
            return await _cancel_aclose_while_a_child_runs(ForkPerTaskExecutor(1, kill_grace=1))

        future = anyio.run(main, backend=backend)
        assert isinstance(future.exception(timeout=10), forkpool.ChildDiedError)
        wait_gone(future.pid, timeout=5)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_aclose_can_be_awaited_again_after_a_timeout(self, backend):
        """wait_for(aclose(), t) timed out; aclose() again returns once the children are reaped."""

        async def main() -> tuple[forkpool.ForkFuture[object], float]:
            ex = ForkPerTaskExecutor(1, kill_grace=1)
            future = await _cancel_aclose_while_a_child_runs(ex)
            started = time.monotonic()
            await ex.aclose()
            return future, time.monotonic() - started

        future, second_wait = anyio.run(main, backend=backend)
        assert future.done()
        assert isinstance(future.exception(timeout=0), forkpool.ChildDiedError)
        assert second_wait < 1 + 5  # kill_grace + a few seconds
        wait_gone(future.pid, timeout=5)

    def test_asyncio_wait_for_then_aclose_again(self):
        """The pattern wait_for(ex.aclose(), t), then, on TimeoutError, await ex.aclose()."""

        async def main() -> bool:
            ex = ForkPerTaskExecutor(1, kill_grace=1)
            future = ex.submit(_nap, 30)
            while future.pid is None:  # noqa: ASYNC110 - forked within milliseconds
                await asyncio.sleep(0.01)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ex.aclose(), 0.3)
            await asyncio.wait_for(ex.aclose(), 10)
            return future.done()

        assert asyncio.run(main())

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_aclose_after_an_async_with_whose_body_timed_out(self, backend):
        """A cancel scope that ends `async with ex:` leaves aclose() usable: it returns."""

        async def main() -> tuple[ForkPerTaskExecutor, list[forkpool.ForkFuture[object]], float]:
            ex = ForkPerTaskExecutor(1, kill_grace=1)
            futures = []
            with anyio.move_on_after(0.5):
                async with ex:
                    futures.append(ex.submit(_nap, 30))
                    await anyio.sleep(30)
            started = time.monotonic()
            await ex.aclose()
            return ex, futures, time.monotonic() - started

        ex, futures, second_wait = anyio.run(main, backend=backend)
        assert repr(ex).endswith("shut down>")
        assert futures[0].done()
        assert second_wait < 1 + 5  # kill_grace + a few seconds

    def test_async_with(self):
        """async with closes the executor with aclose on the way out."""

        async def main() -> ForkPerTaskExecutor:
            async with ForkPerTaskExecutor(1) as ex:
                assert await forkpool.run_async(ex, pow, 3, 2) == 9
            return ex

        ex = asyncio.run(main())
        assert repr(ex).endswith("shut down>")
