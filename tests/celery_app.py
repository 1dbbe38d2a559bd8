"""A Celery app for tests/test_celery.py and the Celery benchmark.

Configured by the environment of the worker (and of the test that sends to it):
FORKPOOL_TEST_BROKER, FORKPOOL_TEST_BACKEND, FORKPOOL_TEST_QUEUE,
FORKPOOL_TEST_TRACKING (a Redis URL, or empty for none) and FORKPOOL_TEST_PREFIX.
Tasks report what they saw to files under FORKPOOL_TEST_REPORTS, so that a test can
tell what happened inside a child that is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.exceptions import SoftTimeLimitExceeded

import forkpool.celery

app = Celery("celery_app")
app.conf.update(
    broker_url=os.environ.get("FORKPOOL_TEST_BROKER", "redis://127.0.0.1:6379/15"),
    result_backend=os.environ.get("FORKPOOL_TEST_BACKEND", "redis://127.0.0.1:6379/15"),
    task_default_queue=os.environ.get("FORKPOOL_TEST_QUEUE", "forkpool-test"),
    forkpool_redis=os.environ.get("FORKPOOL_TEST_TRACKING") or False,
    forkpool_key_prefix=os.environ.get("FORKPOOL_TEST_PREFIX", "forkpool"),
    forkpool_reap_interval=0.5,
    forkpool_ttl=5,
    forkpool_kill_grace=2.0,
    forkpool_fork_from=os.environ.get("FORKPOOL_TEST_FORK_FROM") or "mold",
    forkpool_metrics_port=int(os.environ["FORKPOOL_TEST_METRICS_PORT"])
    if os.environ.get("FORKPOOL_TEST_METRICS_PORT")
    else None,
    forkpool_metrics_addr="127.0.0.1",
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)
REPORTS = Path(os.environ.get("FORKPOOL_TEST_REPORTS", tempfile.gettempdir()))

# Kept across tasks in one process, as a leaky cache would be.
_RETAINED: list[bytearray] = []


def report(name: str, **facts: object) -> None:
    """Write what a task saw, for the test to read."""
    path = REPORTS / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(facts))
    tmp.rename(path)


@signals.worker_init.connect
def _start_an_application_thread(**_: object) -> None:
    """With FORKPOOL_TEST_APP_THREAD: a thread of the worker that keeps reading
    ``app.backend.client``, as an application's health check or metrics might.

    kombu's cached_property takes a lock on every access: a fork of the worker made
    while this thread holds it inherits it held.
    """
    if not os.environ.get("FORKPOOL_TEST_APP_THREAD"):
        return

    def keep_reading() -> None:
        while True:
            _ = app.backend.client

    threading.Thread(target=keep_reading, name="app-backend-reader", daemon=True).start()


@signals.worker_process_init.connect
def _count_process_init(**_: object) -> None:
    report(f"init-{os.getpid()}", pid=os.getpid())


@app.task
def noop() -> None:
    """Nothing: measures the cost of running a task."""


@app.task
def whoami() -> dict[str, int]:
    """The process that ran the task, and its parent."""
    return {"pid": os.getpid(), "ppid": os.getppid()}


@app.task
def heavy(mib: int) -> int:
    """Allocate and keep ``mib`` MiB, as a task that caches too much."""
    block = bytearray(mib * 1024 * 1024)
    for offset in range(0, len(block), 4096):  # touch every page: resident
        block[offset] = 1
    _RETAINED.append(block)
    return len(_RETAINED)


@app.task
def sleeper(name: str, seconds: float) -> str:
    """Report its start, sleep, report its end."""
    report(f"{name}-started", pid=os.getpid())
    time.sleep(seconds)
    report(f"{name}-finished", pid=os.getpid())
    return f"slept {seconds}"


def _sleep_until_soft_limit(name: str, heard: str, then: str) -> str:
    """Report its start, sleep; at SoftTimeLimitExceeded report ``heard``, return ``then``."""
    report(f"{name}-started", pid=os.getpid())
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        report(f"{name}-{heard}", pid=os.getpid())
        return then
    return "not limited"


@app.task(soft_time_limit=1, time_limit=30)
def cleans_up_at_soft_limit(name: str) -> str:
    """Sleep until the soft limit lands, then clean up and return."""
    return _sleep_until_soft_limit(name, "soft", "cleaned up")


@app.task(time_limit=1)
def runs_past_hard_limit(name: str) -> str:
    """Outlive its hard limit, holding a grandchild in its process group."""
    sleeper_process = subprocess.Popen(["sleep", "60"])
    report(f"{name}-started", pid=os.getpid(), grandchild=sleeper_process.pid)
    time.sleep(30)
    return "not limited"


@app.task
def handles_usr1(name: str) -> str:
    """Run until revoked with SIGUSR1 (a soft limit by hand), then return."""
    return _sleep_until_soft_limit(name, "usr1", "stopped gracefully")


@app.task
def crashes() -> None:
    """Die as a segfault would, without a word."""
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def holds_a_grandchild(name: str) -> None:
    """Start a process (which the parent-death signal does not reach), then wait."""
    grandchild = subprocess.Popen(["sleep", "300"])
    report(f"{name}-started", pid=os.getpid(), grandchild=grandchild.pid)
    time.sleep(300)


@app.task(base=forkpool.celery.ForkedTask, bind=True)
def forked_request(self: Any, n: int) -> dict[str, Any]:
    """What a ForkedTask's body sees of its request, and who forked it."""
    return {"id": self.request.id, "n": n, "pid": os.getpid(), "ppid": os.getppid()}


@app.task(base=forkpool.celery.ForkedTask)
def forked_noop() -> None:
    """``noop`` as a ForkedTask: measures the cost of the fork around a task."""


@app.task(base=forkpool.celery.ForkedTask)
def forked_heavy(mib: int) -> dict[str, int]:
    """``heavy`` as a ForkedTask: the pool process must not keep the memory."""
    retained = heavy(mib)
    return {"pid": os.getpid(), "ppid": os.getppid(), "retained": retained}


@app.task(base=forkpool.celery.ForkedTask, soft_time_limit=1, time_limit=30)
def forked_cleans_up(name: str) -> str:
    """``cleans_up_at_soft_limit`` as a ForkedTask."""
    return cleans_up_at_soft_limit(name)


@app.task(base=forkpool.celery.ForkedTask, time_limit=1)
def forked_past_hard_limit(name: str) -> str:
    """``runs_past_hard_limit`` as a ForkedTask."""
    return runs_past_hard_limit(name)
