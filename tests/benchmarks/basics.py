"""What every program of the bench shares: the task, the floor, and fair timing.

Imports nothing beyond the standard library, so that a program measuring a small
parent (``small_parent.py``) stays small.
"""

from __future__ import annotations

import os
import pickle
import selectors
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable


def double(x: int) -> int:
    return x * 2


def bare_fork_loop(n: int, workers: int, work: Callable[[int], object] = double) -> list[Any]:
    """The floor: fork + pipe + waitpid, at most ``workers`` at once, nothing else.

    Child ``i`` sends back ``work(i)`` pickled; one that sends nothing (``work``
    raised) fails the loop.
    """
    results: list[Any] = [None] * n
    running: dict[int, tuple[int, int]] = {}
    selector = selectors.DefaultSelector()
    submitted = 0
    while submitted < n or running:
        while submitted < n and len(running) < workers:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.write(write_fd, pickle.dumps(work(submitted)))
                finally:
                    os._exit(0)
            os.close(write_fd)
            running[pid] = (read_fd, submitted)
            selector.register(read_fd, selectors.EVENT_READ, pid)
            submitted += 1
        for key, _ in selector.select():
            read_fd, index = running.pop(key.data)
            data = os.read(read_fd, 1 << 16)
            selector.unregister(read_fd)
            os.close(read_fd)
            os.waitpid(key.data, 0)
            if not data:
                msg = f"child {key.data} of the bare fork loop sent nothing back"
                raise AssertionError(msg)
            results[index] = pickle.loads(data)  # noqa: S301 - our own child's bytes
    return results


def run_executor(executor: concurrent.futures.Executor, n: int) -> list[int]:
    with executor:
        futures = [executor.submit(double, i) for i in range(n)]
        return [future.result() for future in futures]


def interleaved(
    contenders: dict[str, Callable[[], Any]],
    rounds: int,
    prepare: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each contender, round by round; ``prepare`` runs untimed before each."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            if prepare is not None:
                prepare()
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times
