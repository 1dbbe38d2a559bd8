"""The Celery part of the benchmark suite: real workers, one per contender, in one run.

Every contender is a real ``celery worker`` (tests/celery_worker.py) with two
processes for tasks, on the bench's own Valkey as broker and result backend:

- ``prefork``: Celery's default pool, processes reused for every task;
- ``prefork max_tasks_per_child=1``: a fresh pool process per task, Celery's own
  cure for tasks that leak;
- ``forkpool pool``: ``forkpool.celery:ForkPool``, a fresh fork per task, from a
  mold holding the app (the default);
- ``forkpool pool, fork from worker``: the same, each task forked from the worker
  process itself (``forkpool_fork_from = "worker"``);
- ``prefork + ForkedTask``: prefork, with the task's body in a fork of the pool
  process (``base=forkpool.celery.ForkedTask``).

Per-task cost: a burst of no-op tasks sent at once, from the first send to the
last result, over the number of tasks; rounds interleave the contenders. Beside
them, the floor of any pool that runs each task in a fresh process storing its own
result: the app's process forked two at a time, each child storing a result and
exiting (``celery_floor.py``, in a fresh interpreter). Memory:
the worker's whole process tree (resident), before and after heavy tasks that each
keep a block of memory alive in the process that ran them, as a leaky cache would.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celery_worker import CeleryWorker
from helpers import descendants, is_running, wait_for

CONCURRENCY = 2
FLOOR = Path(__file__).resolve().parent / "celery_floor.py"
# How long a worker's processes must stay the same to count as settled (seconds).
SETTLED_FOR = 1.0
# (label, the worker's pool, where ForkPool forks from, the no-op task, the heavy task)
CONTENDERS = [
    ("prefork", "prefork", "mold", "noop", "heavy"),
    ("prefork max_tasks_per_child=1", "prefork-mtpc1", "mold", "noop", "heavy"),
    ("forkpool pool", "forkpool", "mold", "noop", "heavy"),
    ("forkpool pool, fork from worker", "forkpool", "worker", "noop", "heavy"),
    ("prefork + ForkedTask", "prefork", "mold", "forked_noop", "forked_heavy"),
]


def measure_celery(
    url: str, *, tasks: int, rounds: int, heavy_tasks: int, heavy_mib: int
) -> dict[str, Any]:
    """Per-task milliseconds, the fresh-process floor, and tree RSS (MiB) around heavy tasks."""
    floor = subprocess.run(
        [sys.executable, str(FLOOR), url, str(tasks * 2), str(rounds)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    with tempfile.TemporaryDirectory(prefix="forkpool-bench-celery-") as workdir:
        workers = {
            label: CeleryWorker(
                Path(workdir),
                broker=url,
                backend=url,
                pool=pool,
                concurrency=CONCURRENCY,
                fork_from=fork_from,
            )
            for label, pool, fork_from, _, _ in CONTENDERS
        }
        try:
            for worker in workers.values():
                worker.start(timeout=60)
            clients = {label: worker.client() for label, worker in workers.items()}
            for label, _, _, noop, _ in CONTENDERS:  # a connection and a first task each
                _burst(clients[label], noop, CONCURRENCY)
            seconds: dict[str, list[float]] = {label: [] for label, *_ in CONTENDERS}
            for _ in range(rounds):
                for label, _, _, noop, _ in CONTENDERS:
                    started = time.perf_counter()
                    _burst(clients[label], noop, tasks)
                    seconds[label].append(time.perf_counter() - started)
            memory = {
                label: _heavy_growth(workers[label], clients[label], heavy, heavy_tasks, heavy_mib)
                for label, _, _, _, heavy in CONTENDERS
            }
        finally:
            for worker in workers.values():
                worker.stop()
    return {
        "concurrency": CONCURRENCY,
        "heavy_tasks": heavy_tasks,
        "heavy_mib": heavy_mib,
        "per_task_ms": {
            label: statistics.median(times) / tasks * 1000 for label, times in seconds.items()
        },
        "floor_ms": json.loads(floor.stdout),
        "tree_rss_mib": memory,
    }


def _burst(client: Any, task: str, count: int) -> None:
    """Send ``count`` no-op tasks at once; wait for every result, each checked."""
    results = [client.send_task(f"celery_app.{task}") for _ in range(count)]
    for result in results:
        value = result.get(timeout=120)
        if value is not None:
            msg = f"celery_app.{task} returned {value!r}, not None"
            raise AssertionError(msg)


def _heavy_growth(
    worker: CeleryWorker, client: Any, task: str, count: int, mib: int
) -> dict[str, float]:
    _between_tasks(worker)
    before = worker.tree_rss_mib()
    for _ in range(count):  # one at a time: each lands wherever the pool puts it
        value = client.send_task(f"celery_app.{task}", args=(mib,)).get(timeout=120)
        if not value:
            msg = f"celery_app.{task}({mib}) returned {value!r}"
            raise AssertionError(msg)
    _between_tasks(worker)
    return {"before_mib": before, "after_mib": worker.tree_rss_mib()}


def _between_tasks(worker: CeleryWorker) -> None:
    """Wait until the worker has had just the processes it keeps between tasks for a while.

    Prefork keeps its pool processes; with ``max_tasks_per_child=1`` the one that ran
    the last task lives on for a moment, then is gone, or a zombie, until billiard
    replaces it. ``ForkPool`` keeps its mold, if it has one, and the mold its spare
    child. A tree measured in between would count a process too many or too few.
    """
    if worker.pool == "forkpool":
        idle = 0 if worker.forking_pid == worker.pid else 2
    else:
        idle = CONCURRENCY
    last: dict[str, Any] = {"processes": None, "since": 0.0}

    def settled() -> bool:
        processes = frozenset(descendants(worker.pid))
        now = time.monotonic()
        if processes != last["processes"]:
            last.update(processes=processes, since=now)
        steady = len(processes) == idle and all(is_running(pid) for pid in processes)
        return steady and now - last["since"] >= SETTLED_FOR

    wait_for(settled, 30, f"the worker to keep just its {idle} idle pool processes")
