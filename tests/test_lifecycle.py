"""Stopping tasks: timeouts, cancellation, shutdown, terminate/kill, hooks."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import CancelledError, wait
from typing import TYPE_CHECKING

import pytest
from helpers import is_running, wait_for, wait_gone, written

import forkpool
from forkpool import ChildDiedError, ForkPerTaskExecutor, TaskTimeoutError

if TYPE_CHECKING:
    from pathlib import Path


def _sleep_and_return(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def _start_grandchild_then_sleep(pid_file: Path) -> None:
    grandchild = subprocess.Popen(["sleep", "60"])
    pid_file.write_text(str(grandchild.pid))
    time.sleep(60)


def _ignore_sigterm_then_sleep(ready_file: Path) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready_file.write_text("ready")
    time.sleep(60)


def _count_usr1_with_a_grandchild(dir_: Path, wanted: int) -> int:
    heard: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, _frame: heard.append(signum))
    grandchild = subprocess.Popen(["sleep", "60"])  # SIGUSR1 would kill it
    (dir_ / "grandchild").write_text(str(grandchild.pid))
    deadline = time.monotonic() + 20
    while len(heard) < wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    if grandchild.poll() is not None:
        return -1  # the group heard it too
    return len(heard)


def _finish_gracefully_on_sigterm(ready_file: Path) -> str:
    def finish(signum: int, frame: object) -> None:
        raise _Finish

    signal.signal(signal.SIGTERM, finish)
    try:
        ready_file.write_text("ready")  # inside: SIGTERM may land as soon as it exists
        time.sleep(60)
    except _Finish:
        return "finished on SIGTERM"
    return "slept"


class _Finish(Exception):
    pass


def _read_pid(path: Path) -> int:
    return int(written(path))


class TestTimeouts:
    def test_timeout_stops_the_whole_group(self, tmp_path):
        """A timed-out task fails with TaskTimeoutError, and its grandchild is gone."""
        pid_file = tmp_path / "grandchild"
        with ForkPerTaskExecutor(1, timeout=1.0) as ex:
            future = ex.submit(_start_grandchild_then_sleep, pid_file)
            grandchild = _read_pid(pid_file)
            with pytest.raises(TaskTimeoutError) as info:
                future.result(timeout=10)
        assert info.value.pid == future.pid
        assert info.value.timeout == 1.0
        wait_gone(grandchild, timeout=5)
        assert not is_running(future.pid)

    def test_sigterm_ignored_then_sigkill_after_grace(self, tmp_path):
        """A task that ignores SIGTERM is killed by SIGKILL once kill_grace has passed."""
        ready = tmp_path / "ready"
        with ForkPerTaskExecutor(1, timeout=0.5, kill_grace=0.5) as ex:
            future = ex.submit(_ignore_sigterm_then_sleep, ready)
            wait_for(ready.exists, 10, "the task to ignore SIGTERM")
            started = time.monotonic()
            with pytest.raises(TaskTimeoutError):
                future.result(timeout=10)
            elapsed = time.monotonic() - started
        assert elapsed < 5
        assert not is_running(future.pid)

    def test_fast_task_beats_its_timeout(self):
        """A task that finishes in time is not affected by its timeout."""
        with ForkPerTaskExecutor(1, timeout=5) as ex:
            assert ex.submit(_sleep_and_return, 0, "done").result(timeout=10) == "done"

    def test_options_at_definition(self):
        """@options(timeout=...) sets the callable's default over the executor's."""
        napper = forkpool.options(timeout=0.3)(_sleep_and_return)
        with ForkPerTaskExecutor(1, timeout=60) as ex, pytest.raises(TaskTimeoutError):
            ex.submit(napper, 30).result(timeout=10)

    def test_options_at_call_site_win(self):
        """options() at a call site beats the definition's, and None lifts the timeout."""
        napper = forkpool.options(timeout=0.1)(_sleep_and_return)
        relaxed = forkpool.options(timeout=None)(napper)
        with ForkPerTaskExecutor(1, timeout=0.1) as ex:
            assert ex.submit(relaxed, 0.5, "ok").result(timeout=10) == "ok"

    def test_call_site_options_do_not_change_the_callable(self):
        """Wrapping at a call site leaves the original callable's options alone."""
        napper = forkpool.options(timeout=0.2)(_sleep_and_return)
        forkpool.options(timeout=None)(napper)
        with ForkPerTaskExecutor(1) as ex, pytest.raises(TaskTimeoutError):
            ex.submit(napper, 30).result(timeout=10)

    def test_per_callable_kill_grace(self, tmp_path):
        """options(kill_grace=...) overrides the executor's grace for that callable."""
        ready = tmp_path / "ready"
        stubborn = forkpool.options(timeout=0.3, kill_grace=0.2)(_ignore_sigterm_then_sleep)
        with ForkPerTaskExecutor(1, kill_grace=60) as ex:
            future = ex.submit(stubborn, ready)
            with pytest.raises(TaskTimeoutError):
                future.result(timeout=10)


class TestCancel:
    def test_cancel_running_stops_the_child(self, tmp_path):
        """cancel() on a running task returns True and stops its process group."""
        pid_file = tmp_path / "grandchild"
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_start_grandchild_then_sleep, pid_file)
            grandchild = _read_pid(pid_file)
            assert future.running()
            assert future.cancel() is True
            assert future.cancelled()
            with pytest.raises(CancelledError):
                future.result(timeout=1)
            wait_gone(future.pid, timeout=10)
            wait_gone(grandchild, timeout=10)
            assert ex.submit(pow, 3, 2).result(timeout=10) == 9

    def test_cancel_pending_notifies_waiters(self):
        """A cancelled queued task wakes wait() at once and never runs."""
        with ForkPerTaskExecutor(1) as ex:
            blocker = ex.submit(_sleep_and_return, 30)
            queued = ex.submit(_sleep_and_return, 0, "never")
            assert queued.cancel() is True
            assert queued in wait([queued], timeout=5).done
            assert queued.pid is None
            blocker.cancel()

    def test_cancel_finished_is_false(self):
        """cancel() on a finished future returns False and keeps its result."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(pow, 2, 3)
            assert future.result(timeout=10) == 8
            assert future.cancel() is False
            assert future.result() == 8

    def test_done_callbacks_run_once_on_cancel(self):
        """Done-callbacks run exactly once when a running task is cancelled."""
        calls = []
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_sleep_and_return, 30)
            wait_for(lambda: future.pid is not None, 10, "the fork")
            future.add_done_callback(calls.append)
            future.cancel()
            future.cancel()
        assert calls == [future]


class TestShutdown:
    def test_shutdown_waits_for_running_and_queued(self):
        """shutdown(wait=True) returns after every task has finished."""
        ex = ForkPerTaskExecutor(1)
        futures = [ex.submit(_sleep_and_return, 0.1, i) for i in range(4)]
        ex.shutdown(wait=True)
        assert [f.result(timeout=0) for f in futures] == [0, 1, 2, 3]

    def test_shutdown_cancel_futures(self):
        """shutdown(cancel_futures=True) cancels the queue and notifies its waiters."""
        ex = ForkPerTaskExecutor(1)
        running = ex.submit(_sleep_and_return, 0.5, "ran")
        wait_for(lambda: running.pid is not None, 10, "the first fork")
        queued = [ex.submit(_sleep_and_return, 0, i) for i in range(5)]
        ex.shutdown(wait=True, cancel_futures=True)
        assert running.result(timeout=0) == "ran"
        _done, not_done = wait(queued, timeout=5)
        assert not not_done
        assert all(f.cancelled() for f in queued)

    def test_shutdown_without_wait_returns_at_once(self):
        """shutdown(wait=False) returns while tasks still run; they still finish."""
        ex = ForkPerTaskExecutor(1)
        future = ex.submit(_sleep_and_return, 0.5, "late")
        started = time.monotonic()
        ex.shutdown(wait=False)
        assert time.monotonic() - started < 0.4
        assert future.result(timeout=10) == "late"


class TestSendSignal:
    def test_only_the_child_hears_it_and_the_task_goes_on(self, tmp_path):
        """send_signal() reaches the child's handler, not its group; the task still returns."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_count_usr1_with_a_grandchild, tmp_path, 1)
            grandchild = _read_pid(tmp_path / "grandchild")
            assert future.send_signal(signal.SIGUSR1)
            assert future.result(timeout=30) == 1
        wait_gone(grandchild, timeout=5)  # stopped with the group once the task ended

    def test_an_unhandled_signal_ends_the_task(self):
        """A signal the task does not handle kills the child; the future names it."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_sleep_and_return, 30)
            wait_for(lambda: future.pid is not None, 10, "the fork")
            assert future.send_signal(signal.SIGUSR2)
            with pytest.raises(ChildDiedError) as info:
                future.result(timeout=10)
        assert info.value.signal == signal.SIGUSR2

    def test_false_before_the_fork_and_after_the_end(self):
        """send_signal() is False for a queued task and a finished one, and sends nothing."""
        with ForkPerTaskExecutor(1) as ex:
            running = ex.submit(_sleep_and_return, 0.5, "first")
            queued = ex.submit(_sleep_and_return, 0, "second")
            wait_for(lambda: running.pid is not None, 10, "the first fork")
            assert queued.pid is None
            assert not queued.send_signal(signal.SIGKILL)
            assert running.result(timeout=10) == "first"
            assert not running.send_signal(signal.SIGKILL)
            assert queued.result(timeout=10) == "second"

    @pytest.mark.parametrize("bad", ["SIGTERM", True, 0, -1, 10_000, 15.0, None])
    def test_bad_signal_numbers_are_refused(self, bad):
        """Anything but a valid signal number is a ValueError that names it."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_sleep_and_return, 0, "untouched")
            with pytest.raises(ValueError, match="send_signal\\(\\) needs a signal number, got"):
                future.send_signal(bad)
            assert future.result(timeout=10) == "untouched"


class TestStopWorkers:
    @pytest.mark.parametrize(
        ("method", "signum"),
        [("terminate_workers", signal.SIGTERM), ("kill_workers", signal.SIGKILL)],
    )
    def test_stop_workers(self, method, signum):
        """terminate/kill_workers stop running children, cancel the queue, shut down."""
        ex = ForkPerTaskExecutor(2)
        running = [ex.submit(_sleep_and_return, 30) for _ in range(2)]
        wait_for(lambda: all(f.pid for f in running), 10, "both forks")
        queued = ex.submit(_sleep_and_return, 0)
        getattr(ex, method)()
        for future in running:
            with pytest.raises(ChildDiedError) as info:
                future.result(timeout=10)
            assert info.value.signal == signum
            assert info.value.stopped_by == f"{method}()"
            assert f"stopped by {method}()" in str(info.value)
            assert "OOM" not in str(info.value)
        assert queued.cancelled()
        with pytest.raises(RuntimeError):
            ex.submit(_sleep_and_return, 0)
        ex.shutdown(wait=True)

    @pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
    def test_stopping_an_executor_that_never_forked(self, method):
        """With nothing forked, terminate/kill_workers only shut down: submit then refuses."""
        ex = ForkPerTaskExecutor(1)
        getattr(ex, method)()
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            ex.submit(_sleep_and_return, 0)
        ex.shutdown(wait=True)

    @pytest.mark.parametrize("method", ["terminate_workers", "kill_workers"])
    def test_stopping_after_a_child_died(self, method):
        """After a child's death, terminate/kill_workers raise nothing and still stop the rest."""
        with ForkPerTaskExecutor(2) as ex:
            with pytest.raises(ChildDiedError):
                ex.submit(os._exit, 1).result(timeout=10)
            running = ex.submit(_sleep_and_return, 30)
            wait_for(lambda: running.pid is not None, 10, "the fork")
            getattr(ex, method)()
            with pytest.raises(ChildDiedError, match=rf"stopped by {method}\(\)"):
                running.result(timeout=10)

    def test_tasks_with_a_slot_but_not_forked_are_cancelled(self):
        """kill_workers() right after submits: each task ran or was cancelled, none pending."""
        ex = ForkPerTaskExecutor(4)
        futures = [ex.submit(_sleep_and_return, 30) for _ in range(4)]
        ex.kill_workers()
        ex.shutdown(wait=True)
        for future in futures:
            assert future.done()
            assert future.cancelled() or isinstance(future.exception(), ChildDiedError)

    def test_a_task_that_finishes_when_stopped_keeps_its_result(self, tmp_path):
        """A child that handles terminate_workers()' SIGTERM and returns: its result stands."""
        ready = tmp_path / "ready"
        ex = ForkPerTaskExecutor(1)
        future = ex.submit(_finish_gracefully_on_sigterm, ready)
        wait_for(ready.exists, 10, "the handler")
        ex.terminate_workers()
        ex.shutdown(wait=True)
        assert future.result(timeout=10) == "finished on SIGTERM"


class TestAbandoned:
    def test_dropped_executor_stops_its_children(self):
        """An executor garbage-collected without shutdown warns and stops its children."""
        ex = ForkPerTaskExecutor(1)
        future = ex.submit(_sleep_and_return, 60)
        wait_for(lambda: future.pid is not None, 10, "the fork")
        with pytest.warns(ResourceWarning, match="without shutdown"):
            del ex
        gc.collect()
        with pytest.raises(ChildDiedError, match="garbage-collected"):
            future.result(timeout=15)
        wait_gone(future.pid)

    def test_a_dropped_executors_queued_tasks_always_end_cancelled(self):
        """Dropped without shutdown: running tasks fail naming why, queued ones are cancelled."""
        for _ in range(10):
            ex = ForkPerTaskExecutor(1)
            running = ex.submit(_sleep_and_return, 60)
            queued = [ex.submit(_sleep_and_return, 0) for _ in range(5)]
            wait_for(lambda r=running: r.pid is not None, 10, "the fork")
            with pytest.warns(ResourceWarning, match="without shutdown"):
                del ex
            gc.collect()
            error = running.exception(timeout=15)
            assert isinstance(error, ChildDiedError)
            assert "its executor, garbage-collected without shutdown()" in str(error)
            assert [f.cancelled() for f in queued] == [True] * 5
            wait_gone(running.pid)


def _environment_variable(name: str) -> str | None:
    # os.environ.get itself would travel to a mold as a copy of this process's mapping.
    return os.environ.get(name)


class TestHooks:
    def test_hook_order_threads_and_pids(self, tmp_path):
        """Parent hooks run in the forking thread around fork; the child hook in the child."""
        calls: list[tuple[object, ...]] = []
        marker = tmp_path / "child-hook"

        def pre(fn, args, kwargs):
            calls.append(("pre", fn, args, kwargs, os.getpid()))

        def post(fn, args, kwargs, pid):
            calls.append(("post", fn, args, kwargs, pid))

        def child(fn, args, kwargs):
            marker.write_text(f"{os.getpid()} {args} {kwargs}")
            os.environ["FORKPOOL_TEST_HOOKED"] = "yes"

        def task(x, *, y):
            return os.getpid(), os.environ.get("FORKPOOL_TEST_HOOKED")

        with ForkPerTaskExecutor(
            1, parent_pre_fork=pre, parent_post_fork=post, child_post_fork=child
        ) as ex:
            future = ex.submit(task, 1, y=2)
            pid, hooked = future.result(timeout=10)
        assert hooked == "yes"
        assert calls == [
            ("pre", task, (1,), {"y": 2}, os.getpid()),
            ("post", task, (1,), {"y": 2}, pid),
        ]
        assert future.pid == pid
        assert marker.read_text() == f"{pid} (1,) {{'y': 2}}"

    def test_failing_pre_fork_hook_fails_only_that_task(self):
        """A raising parent_pre_fork fails its task with that exception; no child forks."""
        attempts = []

        def pre(fn, args, kwargs):
            attempts.append(args)
            if args == (0, 0):
                raise LookupError("no connection to release")

        with ForkPerTaskExecutor(1, parent_pre_fork=pre) as ex:
            failed = ex.submit(pow, 0, 0)
            with pytest.raises(LookupError, match="no connection"):
                failed.result(timeout=10)
            assert failed.pid is None
            assert ex.submit(pow, 2, 2).result(timeout=10) == 4

    def test_tasks_that_never_fork_hand_their_slot_on(self):
        """Tasks whose launch fails after a reap still let every later task run."""

        def pre(fn, args, kwargs):
            if args[1] in {2, 3}:
                raise LookupError("no connection to release")

        with ForkPerTaskExecutor(1, parent_pre_fork=pre) as ex:
            # 2 and 3 get the slot only when 1 is reaped: no submit wakes the supervisor.
            futures = [ex.submit(_sleep_and_return, 0.3, n) for n in (1, 2, 3, 4)]
            assert futures[3].result(timeout=10) == 4
        assert futures[0].result() == 1
        assert [type(f.exception()) for f in futures[1:3]] == [LookupError, LookupError]

    def test_failing_post_fork_hook_kills_the_child(self):
        """A raising parent_post_fork fails its task and kills the forked child."""
        with ForkPerTaskExecutor(
            1, parent_post_fork=lambda *_: (_ for _ in ()).throw(OSError("post failed"))
        ) as ex:
            future = ex.submit(_sleep_and_return, 60)
            with pytest.raises(OSError, match="post failed"):
                future.result(timeout=10)
            wait_gone(future.pid)

    def test_failing_child_hook_is_the_task_outcome(self):
        """A raising child_post_fork fails the task like an exception from the task."""

        def child(fn, args, kwargs):
            raise PermissionError("cannot reconnect")

        with ForkPerTaskExecutor(1, child_post_fork=child) as ex:
            with pytest.raises(PermissionError, match="cannot reconnect"):
                ex.submit(pow, 2, 2).result(timeout=10)
            with pytest.raises(PermissionError):
                ex.submit(pow, 2, 2).result(timeout=10)

    def test_initializer_runs_in_every_child_before_the_task(self):
        """initializer(*initargs) runs in each child before its task."""

        def init(value):
            os.environ["FORKPOOL_TEST_INIT"] = value

        with ForkPerTaskExecutor(2, initializer=init, initargs=("set",)) as ex:
            results = [
                ex.submit(_environment_variable, "FORKPOOL_TEST_INIT").result(timeout=10)
                for _ in range(3)
            ]
        assert results == ["set"] * 3
        assert "FORKPOOL_TEST_INIT" not in os.environ

    def test_failing_initializer_fails_the_task_not_the_pool(self):
        """An initializer that raises fails that task; the executor is not broken."""
        with ForkPerTaskExecutor(1, initializer=lambda: 1 // 0) as ex:
            with pytest.raises(ZeroDivisionError):
                ex.submit(pow, 2, 2).result(timeout=10)
            with pytest.raises(ZeroDivisionError):
                ex.submit(pow, 2, 2).result(timeout=10)


class TestAsyncio:
    def test_run_in_executor(self):
        """loop.run_in_executor returns the task's result."""

        async def main():
            with ForkPerTaskExecutor(2) as ex:
                loop = asyncio.get_running_loop()
                return await asyncio.gather(
                    *(loop.run_in_executor(ex, pow, 2, n) for n in range(5))
                )

        assert asyncio.run(main()) == [1, 2, 4, 8, 16]

    def test_wait_for_timeout_stops_the_child(self, tmp_path):
        """asyncio.wait_for around run_in_executor really stops the work on timeout."""
        pid_file = tmp_path / "grandchild"

        async def main():
            with ForkPerTaskExecutor(1) as ex:
                loop = asyncio.get_running_loop()
                work = loop.run_in_executor(ex, _start_grandchild_then_sleep, pid_file)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(work, timeout=1.0)

        started = time.monotonic()
        asyncio.run(main())
        assert time.monotonic() - started < 10
        wait_gone(_read_pid(pid_file))


class TestWithoutPidfd:
    def test_exits_are_noticed_without_pidfd(self, monkeypatch):
        """On kernels without pidfd, exits, deaths and timeouts still resolve futures."""
        monkeypatch.setattr(forkpool._linux, "HAS_PIDFD", False)
        with ForkPerTaskExecutor(2, timeout=2) as ex:
            assert ex.submit(pow, 2, 5).result(timeout=10) == 32
            with pytest.raises(ChildDiedError):
                ex.submit(os._exit, 3).result(timeout=10)
            with pytest.raises(TaskTimeoutError):
                ex.submit(_sleep_and_return, 30).result(timeout=10)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_have_parent_death_signal():
    """Each child asked the kernel for SIGKILL when its parent thread dies."""

    def pdeathsig():
        import ctypes  # noqa: PLC0415 - only needed in the child

        value = ctypes.c_int()
        ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
        return value.value

    with ForkPerTaskExecutor(1) as ex:
        assert ex.submit(pdeathsig).result(timeout=10) == signal.SIGKILL
