"""Dask tasks in fresh forks: a worker plugin, dask.annotate(executor="forked"), cancel.

Heavy tasks run in a child of the worker, so the memory they grow goes back to the
OS when each ends; cancelling one (client.cancel) stops its child.
"""

import os
import tempfile
import time
from pathlib import Path

import dask
from distributed import Client, LocalCluster

from forkpool.dask import ForkedExecutorPlugin


def heavy(n: int) -> tuple[int, int]:
    scratch = [str(i) for i in range(2_000_000)]  # ~120 MiB, gone with the child
    return n + len(scratch) // 2_000_000 - 1, os.getpid()


def runaway(pid_file: Path) -> None:
    pid_file.write_text(str(os.getpid()))
    time.sleep(60)


def main() -> None:
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(ForkedExecutorPlugin(max_workers=2, kill_grace=1))
        (worker,) = client.run(os.getpid).values()
        with dask.annotate(executor="forked"):
            results = client.gather([client.submit(heavy, n, pure=False) for n in range(4)])
        print(f"worker {worker} ran 4 heavy tasks in children {[pid for _, pid in results]}")
        with tempfile.TemporaryDirectory() as scratch, dask.annotate(executor="forked"):
            pid_file = Path(scratch) / "runaway.pid"
            stuck = client.submit(runaway, pid_file, pure=False)
            while not pid_file.exists():
                time.sleep(0.05)
            child = Path("/proc", pid_file.read_text())
        client.cancel(stuck)
        deadline = time.monotonic() + 10
        while child.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"cancelled the runaway task; its child {child.name} is gone: {not child.exists()}")


if __name__ == "__main__":
    main()
