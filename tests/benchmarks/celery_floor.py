"""Run by celery_bench.py in a fresh interpreter: the floor of a fresh process per Celery task.

``python celery_floor.py URL TASKS ROUNDS`` loads tests/celery_app.py with URL as its
result backend, sets the app up as ForkPool's mold does (the same ``prepare``, its
objects made immortal and frozen), then forks TASKS children two at a time, as a
``-c 2`` worker runs them, each reaped when it is done, in two ways:

- ``fork, exit``: the child exits at once;
- ``fork, store result, exit``: the child stores a result through the app's backend,
  on a connection of its own (a fork cannot share its parent's), as every task's
  child of a pool that forks per task must.

No broker, no message, no tracer, no pool: what any design that runs each task in a
fresh process, storing its own result, pays before it does anything else. Prints
one JSON object: milliseconds per task, median of the rounds.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

TESTS = Path(__file__).resolve().parent.parent
WORKERS = 2


def forks(tasks: int, body: Callable[[], object]) -> float:
    """Seconds for ``tasks`` children, ``WORKERS`` at a time, each running ``body``."""
    selector = selectors.DefaultSelector()
    running: dict[int, int] = {}
    started = time.perf_counter()
    forked = done = 0
    while done < tasks:
        while forked < tasks and len(running) < WORKERS:
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                status = 1
                try:
                    body()
                    os.write(write_fd, b"ok")
                    status = 0
                finally:
                    os._exit(status)
            os.close(write_fd)
            running[pid] = read_fd
            selector.register(read_fd, selectors.EVENT_READ, pid)
            forked += 1
        for key, _ in selector.select():
            read_fd = running.pop(key.data)
            said = os.read(read_fd, 2)
            selector.unregister(read_fd)
            os.close(read_fd)
            _, status = os.waitpid(key.data, 0)
            if said != b"ok" or status != 0:
                msg = f"a child failed (status {status}, said {said!r})"
                raise AssertionError(msg)
            done += 1
    return time.perf_counter() - started


def main() -> None:
    url, tasks, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.environ["FORKPOOL_TEST_BROKER"] = url
    os.environ["FORKPOOL_TEST_BACKEND"] = url
    sys.path.insert(0, str(TESTS))
    from forkpool import _immortal  # noqa: PLC0415 - after the app's environment is set
    from forkpool.celery import _mold  # noqa: PLC0415

    _mold.prepare("celery_app", "app", None)
    from celery_app import app  # noqa: PLC0415 - imported by prepare

    gc.collect()
    _immortal.make_everything_immortal()
    gc.freeze()
    prefix = f"forkpool-floor-{uuid.uuid4().hex[:8]}"

    def store() -> None:
        app.backend.store_result(f"{prefix}-{os.getpid()}", None, "SUCCESS")

    cases = {"fork, exit": lambda: None, "fork, store result, exit": store}
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, body in cases.items():
            seconds[name].append(forks(tasks, body))
    print(
        json.dumps(
            {name: statistics.median(times) / tasks * 1000 for name, times in seconds.items()}
        )
    )


if __name__ == "__main__":
    main()
