"""Integrations with libraries that schedule work: joblib's backend."""

from __future__ import annotations

import functools
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


_initialized: str | None = None
# joblib's variables for the native thread pools' sizes.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _initialize(value: str) -> None:
    global _initialized  # noqa: PLW0603 - the child's own, as joblib's test has it
    _initialized = value


def _initialized_as() -> str | None:
    return _initialized


def _mark_child(directory: Path, fn: object, args: object, kwargs: object) -> None:
    del fn, args, kwargs
    (directory / str(os.getpid())).touch()


def _blas_threads() -> int:
    """The BLAS pool's size that numpy's threadpoolctl reports in this process."""
    import numpy as np  # noqa: PLC0415 - loads the BLAS library
    import threadpoolctl  # noqa: PLC0415

    del np
    (blas,) = [info for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
    return int(blas["num_threads"])


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

    def test_initializer_given_to_parallel_runs_in_every_child(self):
        """Parallel(backend="forkpool", initializer=..., initargs=...) runs it before each call."""
        results = joblib.Parallel(
            n_jobs=2, backend="forkpool", initializer=_initialize, initargs=("yes",)
        )(joblib.delayed(_initialized_as)() for _ in range(4))
        assert results == ["yes"] * 4
        assert _initialized is None  # in the children only

    def test_hooks_given_to_parallel_run(self, tmp_path):
        """Any executor argument given to Parallel takes effect: here child_post_fork."""
        results = joblib.Parallel(
            n_jobs=2,
            backend="forkpool",
            batch_size=1,
            child_post_fork=functools.partial(_mark_child, tmp_path),
        )(joblib.delayed(_pid_of_call)(n) for n in range(3))
        assert {path.name for path in tmp_path.iterdir()} == {str(pid) for _, pid in results}

    def test_parallel_arguments_outlive_an_abort(self):
        """After a failed call aborts a reused Parallel, its next call keeps every argument."""
        with joblib.Parallel(
            n_jobs=2, backend="forkpool", initializer=_initialize, initargs=("again",)
        ) as parallel:
            with pytest.raises(LookupError, match="one call failed"):
                parallel(joblib.delayed(_fail_after)(0) for _ in range(2))
            assert parallel(joblib.delayed(_initialized_as)() for _ in range(4)) == ["again"] * 4

    def test_an_argument_the_executor_does_not_take_is_an_error(self):
        """An unknown argument, to Parallel or to parallel_config, is a TypeError naming it."""
        with pytest.raises(TypeError, match=r"'idle_worker_timeout'.*does not take"):
            joblib.Parallel(n_jobs=2, backend="forkpool", idle_worker_timeout=10)(
                joblib.delayed(_pid_of_call)(n) for n in range(2)
            )
        with (
            pytest.raises(TypeError, match=r"'max_workerz'.*does not take"),
            joblib.parallel_config(backend="forkpool", max_workerz=2),
        ):
            pass  # pragma: no cover - parallel_config makes the backend as it enters

    @pytest.mark.parametrize(
        ("config", "expected"),
        [
            ({}, max((os.cpu_count() or 1) // 2, 1)),  # joblib's default: cpu_count // n_jobs
            ({"inner_max_num_threads": 1}, 1),
            ({"inner_max_num_threads": 3}, 3),
        ],
        ids=["default", "one", "three"],
    )
    def test_children_limit_blas_threads(self, config, expected):
        """Each child's BLAS pool is limited as joblib promises, and the parent's is not."""
        threadpoolctl = pytest.importorskip("threadpoolctl")
        pytest.importorskip("numpy")
        if any(var in os.environ for var in _THREAD_VARIABLES):
            pytest.skip("the environment sets a thread count, which joblib keeps")
        parent_before = _blas_threads()
        with joblib.parallel_config(backend="forkpool", n_jobs=2, **config):
            results = joblib.Parallel(batch_size=1)(
                joblib.delayed(_blas_threads)() for _ in range(4)
            )
        assert results == [expected] * 4
        assert _blas_threads() == parent_before
        del threadpoolctl

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


@pytest.fixture(name="one_thread_client", scope="module")
def fixture_one_thread_client():
    """A LocalCluster of one worker process with a single thread, with the plugin."""
    distributed = pytest.importorskip("distributed")
    from forkpool.dask import ForkedExecutorPlugin  # noqa: PLC0415

    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.register_plugin(ForkedExecutorPlugin(max_workers=1, kill_grace=1))
        yield client


def _wait_for_pid_file(path: Path) -> int:
    deadline = time.monotonic() + 20
    while not path.exists() or not path.read_text():
        if time.monotonic() > deadline:
            msg = f"no pid in {path} within 20 s"
            raise AssertionError(msg)
        time.sleep(0.05)
    return int(path.read_text())


def _slow_square(directory: str, n: int) -> int:
    Path(directory, f"square-{n}").write_text(str(os.getpid()))
    time.sleep(1.5)
    return n * n


def _scheduler_knows(key: str, dask_scheduler: object) -> bool:
    return key in dask_scheduler.tasks  # type: ignore[attr-defined]


def _worker_state(key: str, dask_worker: object) -> str | None:
    task = dask_worker.state.tasks.get(key)  # type: ignore[attr-defined]
    return None if task is None else task.state


@pytest.mark.hosts
class TestDaskCancel:
    def test_cancelling_a_forked_task_frees_the_worker(self, one_thread_client, tmp_path):
        """One thread: after client.cancel of a running forked task, the next tasks run."""
        import dask  # noqa: PLC0415

        client = one_thread_client
        with dask.annotate(executor="forked"):
            running = client.submit(_announce_then_nap, str(tmp_path), 1, pure=False)
        child = _wait_for_pid_file(tmp_path / "1")
        client.cancel(running)
        wait_gone(child, timeout=10)
        with dask.annotate(executor="forked"):
            forked = client.submit(_pid_of_call, 2, pure=False)
        in_thread = client.submit(_pid_of_call, 3, pure=False)
        assert forked.result(timeout=10)[0] == 2
        assert in_thread.result(timeout=10)[0] == 3

    def test_a_cancelled_key_submitted_again_gets_its_value(self, one_thread_client, tmp_path):
        """client.cancel, then the same key again: its value arrives, as on a thread pool."""
        import dask  # noqa: PLC0415

        client = one_thread_client
        with dask.annotate(executor="forked"):
            first = client.submit(_slow_square, str(tmp_path), 7, key="square-7")
        _wait_for_pid_file(tmp_path / "square-7")
        client.cancel(first)
        # Once the cancel has reached the worker, and the scheduler has forgotten the
        # key (sooner, the client's cancel may still reach the new submission, which a
        # thread-pool task does no better against).
        deadline = time.monotonic() + 10
        while client.run_on_scheduler(_scheduler_knows, "square-7") or not all(
            state in (None, "cancelled") for state in client.run(_worker_state, "square-7").values()
        ):
            assert time.monotonic() < deadline, "the cancel did not go through"
            time.sleep(0.01)
        with dask.annotate(executor="forked"):
            again = client.submit(_slow_square, str(tmp_path), 7, key="square-7")
        assert again.result(timeout=20) == 49
