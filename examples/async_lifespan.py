"""forkpool in an async application: run_async under asyncio and trio, aclose at the end.

An application's lifespan makes one executor, its handlers await tasks with
forkpool.run_async (a handler that gives up stops its task's child), and its
shutdown awaits ex.aclose(), which lets the event loop keep serving while the last
tasks finish. The same code runs on both of anyio's backends.
"""

import os
import tempfile
import time
from pathlib import Path

import anyio

import forkpool


def render(report_id: int) -> str:
    time.sleep(0.2)  # heavy work, in a fresh child
    return f"report {report_id} rendered by child {os.getpid()}"


def runaway(pid_file: Path) -> None:
    pid_file.write_text(str(os.getpid()))
    time.sleep(60)


async def application(backend: str, pid_file: Path) -> None:
    ex = forkpool.ForkPerTaskExecutor(max_workers=2, kill_grace=1)
    async with anyio.create_task_group() as handlers:
        for report_id in range(3):
            handlers.start_soon(handle, ex, report_id)
        handlers.start_soon(handle_with_deadline, ex, pid_file)
    started = time.monotonic()
    await ex.aclose()  # the lifespan's shutdown: the loop is free meanwhile
    print(f"[{backend}] executor closed in {time.monotonic() - started:.2f}s")


async def handle(ex: forkpool.ForkPerTaskExecutor, report_id: int) -> None:
    print(await forkpool.run_async(ex, render, report_id))


async def handle_with_deadline(ex: forkpool.ForkPerTaskExecutor, pid_file: Path) -> None:
    with anyio.move_on_after(0.5):  # the handler gives up: the child is stopped
        await forkpool.run_async(ex, runaway, pid_file)
    print("gave up on the runaway task after 0.5s")


def main() -> None:
    for backend in ("asyncio", "trio"):
        with tempfile.TemporaryDirectory() as scratch:
            pid_file = Path(scratch) / "runaway.pid"
            anyio.run(application, backend, pid_file, backend=backend)
            child = Path("/proc", pid_file.read_text())
        deadline = time.monotonic() + 5
        while child.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"[{backend}] the runaway child {child.name} is gone: {not child.exists()}")


if __name__ == "__main__":
    main()
