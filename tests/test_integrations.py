"""Integrations with libraries that schedule work: joblib's backend."""

from __future__ import annotations

import os
import time
from pathlib import Path

import joblib
import pytest
from helpers import wait_gone

import forkpool
import forkpool.joblib  # registers the "forkpool" backend


def _pid_of_call(n: int) -> tuple[int, int]:
    return n, os.getpid()


def _announce_then_nap(directory: str, n: int) -> None:
    Path(directory, str(n)).write_text(str(os.getpid()))
    time.sleep(30)


def _fail_after(seconds: float) -> None:
    time.sleep(seconds)
    message = "one call failed"
    raise LookupError(message)


class TestJoblib:
    def test_results_in_order_from_fresh_children(self):
        """Parallel(backend="forkpool") returns results in order, from children of ours."""
        with joblib.parallel_config(backend="forkpool", n_jobs=2):
            results = joblib.Parallel(batch_size=1)(
                joblib.delayed(_pid_of_call)(n) for n in range(6)
            )
        assert [n for n, _ in results] == list(range(6))
        pids = {pid for _, pid in results}
        assert os.getpid() not in pids
        assert len(pids) == 6  # a fresh child for every batch of one

    def test_unpicklable_calls_run(self):
        """Calls are inherited through fork: a lambda over a lock needs no pickling."""
        import threading  # noqa: PLC0415

        lock = threading.Lock()
        calls = [joblib.delayed(lambda n: (lock.locked(), n * 2))(n) for n in range(4)]
        results = joblib.Parallel(n_jobs=2, backend="forkpool")(calls)
        assert results == [(False, 0), (False, 2), (False, 4), (False, 6)]

    def test_a_failing_call_kills_the_rest(self, tmp_path):
        """One call raising: joblib aborts, and the other calls' children are killed."""
        calls = [
            joblib.delayed(_announce_then_nap)(str(tmp_path), 0),
            joblib.delayed(_fail_after)(0.5),
        ]
        started = time.monotonic()
        with pytest.raises(LookupError, match="one call failed"):
            joblib.Parallel(n_jobs=2, backend="forkpool", batch_size=1)(calls)
        assert time.monotonic() - started < 10
        wait_gone(int((tmp_path / "0").read_text()), timeout=5)

    def test_executor_settings_pass_through(self):
        """Arguments beyond n_jobs go to the executor: a timeout applies to each batch."""
        with (
            joblib.parallel_config(backend="forkpool", n_jobs=2, timeout=0.5),
            pytest.raises(forkpool.TaskTimeoutError),
        ):
            joblib.Parallel(batch_size=1)(joblib.delayed(time.sleep)(30) for _ in range(2))

    def test_results_as_a_generator(self):
        """return_as="generator" yields results as their batches finish, in order."""
        results = joblib.Parallel(n_jobs=2, backend="forkpool", return_as="generator")(
            joblib.delayed(_pid_of_call)(n) for n in range(5)
        )
        assert [n for n, _ in results] == list(range(5))

    def test_one_job_runs_here(self):
        """n_jobs=1 falls back to joblib's sequential backend, in this process."""
        results = joblib.Parallel(n_jobs=1, backend="forkpool")(
            joblib.delayed(_pid_of_call)(n) for n in range(2)
        )
        assert {pid for _, pid in results} == {os.getpid()}


def _worker_pid() -> int:
    return os.getpid()


def _parent_of_task() -> tuple[int, int]:
    return os.getpid(), os.getppid()


@pytest.fixture(name="client", scope="module")
def fixture_client():
    """A real LocalCluster of one worker process (processes=True), with the plugin."""
    distributed = pytest.importorskip("distributed")
    from forkpool.dask import ForkedExecutorPlugin  # noqa: PLC0415

    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(ForkedExecutorPlugin(max_workers=2, kill_grace=1))
        yield client


@pytest.mark.hosts
class TestDask:
    def test_annotated_tasks_run_in_forks_of_the_worker(self, client):
        """dask.annotate(executor="forked") runs a task in a fresh child of the worker."""
        import dask  # noqa: PLC0415

        (worker,) = client.run(_worker_pid).values()
        with dask.annotate(executor="forked"):
            futures = [client.submit(_parent_of_task, pure=False) for _ in range(3)]
        results = client.gather(futures)
        assert {parent for _, parent in results} == {worker}
        assert len({child for child, _ in results}) == 3
        assert client.submit(_worker_pid, pure=False).result() == worker  # unannotated

    def test_a_cancelled_task_stops_its_child(self, client, tmp_path):
        """client.cancel on a task running in a fork stops its child."""
        import dask  # noqa: PLC0415

        with dask.annotate(executor="forked"):
            future = client.submit(_announce_then_nap, str(tmp_path), 7, pure=False)
        pid_file = tmp_path / "7"
        deadline = time.monotonic() + 20
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        client.cancel(future)
        wait_gone(child, timeout=10)
