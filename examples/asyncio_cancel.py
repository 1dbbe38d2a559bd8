"""asyncio integration: ``wait_for`` around ``run_in_executor`` really stops the work.

With ProcessPoolExecutor the timeout abandons the future but the worker keeps
computing; with forkpool the child (and anything it started) is stopped.
Run it with ``python examples/asyncio_cancel.py``.
"""

from __future__ import annotations

import asyncio
import os
import time

from forkpool import ForkPerTaskExecutor


def crunch(seconds: float) -> int:
    """Pretend to work for a while; return the child's pid."""
    time.sleep(seconds)
    return os.getpid()


async def main() -> None:
    loop = asyncio.get_running_loop()
    with ForkPerTaskExecutor(max_workers=2, kill_grace=1.0) as ex:
        quick = await asyncio.wait_for(loop.run_in_executor(ex, crunch, 0.1), timeout=5)
        print(f"quick task ran in child {quick}")

        slow = loop.run_in_executor(ex, crunch, 60)
        try:
            await asyncio.wait_for(slow, timeout=0.5)
        except TimeoutError:
            print("slow task timed out after 0.5s; its child was stopped, not left running")

        results = await asyncio.gather(*(loop.run_in_executor(ex, crunch, 0.05) for _ in range(4)))
        print(f"four more tasks ran in {len(set(results))} fresh children")


if __name__ == "__main__":
    asyncio.run(main())
