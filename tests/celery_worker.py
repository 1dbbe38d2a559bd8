"""A real Celery worker in a subprocess, for tests/test_celery.py and the benchmark.

The worker runs tests/celery_app.py with the pool asked for; the caller sends it
tasks by name through a client app of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import children, descendants, dies_with_us, wait_for, written

from forkpool._demo import tree_rss

if TYPE_CHECKING:
    from celery import Celery

TESTS = Path(__file__).resolve().parent
POOLS = {
    "forkpool": ["-P", "custom"],
    "prefork": ["-P", "prefork"],
    "prefork-mtpc1": ["-P", "prefork", "--max-tasks-per-child", "1"],
    "threads": ["-P", "threads"],
}


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class CeleryWorker:
    """One ``celery worker`` process, its log in a file, stopped however a test asks."""

    def __init__(
        self,
        workdir: Path,
        *,
        broker: str,
        backend: str,
        tracking: str = "",
        pool: str = "forkpool",
        concurrency: int = 1,
        node: str | None = None,
        queue: str | None = None,
        prefix: str | None = None,
        extra_args: tuple[str, ...] = (),
        fork_from: str = "mold",
        env: dict[str, str] | None = None,
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.node = node or f"fptest-{tag}@%h"
        self.queue = queue or f"fptest-{tag}"
        self.prefix = prefix or f"fptest-{tag}"
        self.reports = workdir / f"reports-{tag}"
        self.reports.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"worker-{tag}.log"
        self.pool = pool
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "FORKPOOL_TEST_BROKER": broker,
            "FORKPOOL_TEST_BACKEND": backend,
            "FORKPOOL_TEST_TRACKING": tracking,
            "FORKPOOL_TEST_QUEUE": self.queue,
            "FORKPOOL_TEST_PREFIX": self.prefix,
            "FORKPOOL_TEST_REPORTS": str(self.reports),
            "CELERY_CUSTOM_WORKER_POOL": "forkpool.celery:ForkPool",
            "FORKPOOL_TEST_FORK_FROM": fork_from,
            **(env or {}),
        }
        self._args = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            *POOLS[pool],
            "-c",
            str(concurrency),
            "-n",
            self.node,
            "-Q",
            self.queue,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "info",
            *extra_args,
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self._clients: list[Celery] = []

    # --- life ---------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> CeleryWorker:
        """Start the worker and wait until it says it is ready."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                dies_with_us(self._args),
                cwd=TESTS,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        mark = self.log.read_text(errors="replace").count(" ready.")
        wait_for(
            lambda: self.log.read_text(errors="replace").count(" ready.") > mark or not self.alive,
            timeout,
            "the Celery worker to be ready",
        )
        assert self.alive, f"the worker exited at start:\n{self.log_text()}"
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the worker's main process only."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signum)

    def wait(self, timeout: float) -> int:
        """Wait for the worker to exit; its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Make sure the worker and its session are gone (cold shutdown, then SIGKILL).

        The clients made by :meth:`client` are closed too.
        """
        while self._clients:
            self._clients.pop().close()
        if self.process is None:
            return
        if self.alive:
            self.signal(signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- looking at it ------------------------------------------------------------------

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def report(self, name: str, timeout: float = 20) -> dict[str, Any]:
        """What a task reported under ``name``, waiting for it."""
        import json  # noqa: PLC0415

        path = self.reports / f"{name}.json"
        facts: dict[str, Any] = json.loads(written(path, timeout))
        return facts

    def has_report(self, name: str) -> bool:
        return (self.reports / f"{name}.json").exists()

    @property
    def forking_pid(self) -> int:
        """The process tasks are forked from: the pool's mold, else the worker itself."""
        molds = [pid for pid in children(self.pid) if _comm(pid) == "fp-mold"]
        return molds[0] if molds else self.pid

    def task_processes(self) -> list[int]:
        """The processes below the worker that are not its mold or the mold's spare."""
        return [
            pid
            for pid in descendants(self.pid)
            if pid != self.forking_pid and _comm(pid) != "fp-spare"
        ]

    def tree_rss_mib(self) -> float:
        """Resident memory of the worker and every process under it, in MiB."""
        return tree_rss(self.pid) / (1 << 20)

    def client(self) -> Celery:
        """A Celery app that sends to this worker's queue and reads its results."""
        from celery import Celery  # noqa: PLC0415

        app = Celery("fptest-client")
        app.conf.update(
            broker_url=self.env["FORKPOOL_TEST_BROKER"],
            result_backend=self.env["FORKPOOL_TEST_BACKEND"],
            task_default_queue=self.queue,
            broker_connection_retry_on_startup=True,
        )
        self._clients.append(app)
        return app
