"""What a task or a callback does wrong stays with that one task."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from typing import TYPE_CHECKING

import pytest
from helpers import is_running, wait_for, wait_gone, written

import forkpool
from forkpool import ForkPerTaskExecutor, ResultNotPicklableError, TaskTimeoutError

if TYPE_CHECKING:
    from pathlib import Path


class _Fatal(BaseException):
    """A BaseException of the user's own."""


BASE_EXCEPTIONS = [SystemExit, KeyboardInterrupt, asyncio.CancelledError, _Fatal]
IDS = [cls.__name__ for cls in BASE_EXCEPTIONS]


def _nap(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def _raise(cls: type[BaseException]) -> None:
    raise cls("raised while unpickling")


class _Explodes:
    """Unpickles by raising ``cls``."""

    def __init__(self, cls: type[BaseException]) -> None:
        self.cls = cls

    def __reduce__(self) -> tuple[object, ...]:
        return _raise, (self.cls,)


class _RefusesPickling:
    """Pickling it raises ``cls``."""

    def __init__(self, cls: type[BaseException]) -> None:
        self.cls = cls

    def __reduce__(self) -> tuple[object, ...]:
        raise self.cls("raised while pickling")


class _ErrorThatExplodes(Exception):
    """An exception whose unpickling raises a BaseException."""

    def __init__(self, cls: type[BaseException]) -> None:
        super().__init__("the task failed")
        self.cls = cls

    def __reduce__(self) -> tuple[object, ...]:
        return _raise, (self.cls,)


def _return(value: object) -> object:
    return value


def _fail_with(error: BaseException) -> None:
    raise error


def _report_then_return(value: object, result: object, gate: Path | None = None) -> object:
    if gate is not None:
        wait_for(gate.exists, 10, "the gate")
    forkpool.report_progress(value)
    return result


def _assert_executor_works(ex: ForkPerTaskExecutor) -> None:
    assert ex.submit(pow, 2, 5).result(timeout=10) == 32


class TestCallbacks:
    @pytest.mark.parametrize("cls", BASE_EXCEPTIONS, ids=IDS)
    def test_done_callback_raising_is_contained(self, cls, caplog):
        """A done-callback raising any BaseException is logged; every other task carries on."""
        caplog.set_level(logging.ERROR, logger="forkpool")
        with ForkPerTaskExecutor(2) as ex:
            neighbour = ex.submit(_nap, 0.5, "neighbour")
            future = ex.submit(_return, 1)
            future.add_done_callback(lambda _f: _raise(cls))
            assert future.result(timeout=10) == 1
            assert neighbour.result(timeout=10) == "neighbour"
            _assert_executor_works(ex)
        wait_for(lambda: any(cls.__name__ in r.exc_text for r in _with_tb(caplog)), 5, "the log")

    @pytest.mark.parametrize("cls", BASE_EXCEPTIONS, ids=IDS)
    def test_progress_callback_raising_is_contained(self, cls, caplog, tmp_path):
        """A progress callback raising any BaseException is logged; the tasks carry on."""
        caplog.set_level(logging.ERROR, logger="forkpool")
        gate = tmp_path / "gate"
        with ForkPerTaskExecutor(2) as ex:
            neighbour = ex.submit(_nap, 0.5, "neighbour")
            # The task reports only once the callback is added: one added after the
            # report is called at once, in this thread, where its exception is ours.
            future = ex.submit(_report_then_return, "half", "done", gate)
            future.add_progress_callback(lambda _f, _v: _raise(cls))
            gate.touch()
            assert future.result(timeout=10) == "done"
            assert neighbour.result(timeout=10) == "neighbour"
            _assert_executor_works(ex)

    def test_cancel_stops_the_child_even_if_a_callback_raises(self):
        """cancel() stops the running child before a done-callback's SystemExit reaches us."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_nap, 60, None)
            wait_for(lambda: future.pid is not None, 10, "the fork")
            future.add_done_callback(lambda _f: _raise(SystemExit))
            with pytest.raises(SystemExit):
                future.cancel()
            wait_gone(future.pid, timeout=10)
            _assert_executor_works(ex)


def _with_tb(caplog):
    return [r for r in caplog.records if r.exc_text]


class TestUnpickling:
    @pytest.mark.fork_only  # its arguments are made not to pickle
    @pytest.mark.parametrize("cls", BASE_EXCEPTIONS, ids=IDS)
    def test_result_that_raises_when_unpickled(self, cls):
        """A result whose unpickling raises a BaseException fails only its own future."""
        with ForkPerTaskExecutor(2) as ex:
            neighbour = ex.submit(_nap, 0.5, "neighbour")
            future = ex.submit(_return, _Explodes(cls))
            with pytest.raises(ResultNotPicklableError, match=cls.__name__) as info:
                future.result(timeout=10)
            assert "unpickled in the parent" in str(info.value)
            assert neighbour.result(timeout=10) == "neighbour"
            _assert_executor_works(ex)

    @pytest.mark.fork_only  # its arguments are made not to pickle
    @pytest.mark.parametrize("cls", BASE_EXCEPTIONS, ids=IDS)
    def test_progress_value_that_raises_when_unpickled(self, cls, caplog):
        """A progress value whose unpickling raises is dropped with a warning."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_report_then_return, _Explodes(cls), "done")
            assert future.result(timeout=10) == "done"
            _assert_executor_works(ex)
        assert any("does not unpickle" in r.getMessage() for r in caplog.records)

    @pytest.mark.fork_only  # its arguments are made not to pickle
    @pytest.mark.parametrize("cls", BASE_EXCEPTIONS, ids=IDS)
    def test_result_that_raises_when_pickled(self, cls):
        """A result whose pickling raises a BaseException fails with a clear error."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_return, _RefusesPickling(cls))
            with pytest.raises(ResultNotPicklableError, match=cls.__name__):
                future.result(timeout=10)

    @pytest.mark.fork_only  # its arguments are made not to pickle
    @pytest.mark.parametrize("cls", BASE_EXCEPTIONS, ids=IDS)
    def test_exception_that_raises_when_rebuilt(self, cls):
        """A task exception that cannot be rebuilt arrives as its class, with its message."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_fail_with, _ErrorThatExplodes(cls))
            error = future.exception(timeout=10)
        assert type(error) is _ErrorThatExplodes
        assert str(error) == "the task failed"


def _fork_a_helper_that(leaves_by: str) -> str:
    pid = os.fork()
    if pid == 0:
        # The helper: it is inside this task's frames, as a forked copy of the child.
        if leaves_by == "exit":
            sys.exit(0)
        if leaves_by == "raise":
            message = "raised in the helper"
            raise RuntimeError(message)
        return "the helper's value"
    os.waitpid(pid, 0)
    return "the task's value"


def _fork_a_reporting_helper() -> int:
    pid = os.fork()
    if pid == 0:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            forkpool.report_progress("from the helper")
        warned = any("in a process a task forked" in str(w.message) for w in caught)
        os._exit(0 if warned else 1)
    return os.waitpid(pid, 0)[1]


class TestHelperProcesses:
    @pytest.mark.parametrize("leaves_by", ["exit", "return", "raise"])
    def test_only_the_forked_child_reports_an_outcome(self, leaves_by):
        """A helper the task forks never supplies the outcome, however it leaves."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_fork_a_helper_that, leaves_by)
            assert future.result(timeout=10) == "the task's value"
            _assert_executor_works(ex)

    def test_a_helper_cannot_report_progress(self):
        """report_progress() in a helper the task forked warns and sends nothing."""
        values = []
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_fork_a_reporting_helper)
            future.add_progress_callback(lambda _f, value: values.append(value))
            assert future.result(timeout=10) == 0, "the helper was not warned"
        assert values == []


def _nested_executor_task(pid_file: Path) -> None:
    """Runs its own executor, whose task starts a grandchild; then waits forever."""
    with ForkPerTaskExecutor(1) as inner:
        future = inner.submit(_start_sleeper, pid_file)
        future.result()


def _start_sleeper(pid_file: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    pid_file.write_text(json.dumps({"inner": os.getpid(), "sleeper": sleeper.pid}))
    time.sleep(60)


def _read_pids(pid_file: Path) -> dict[str, int]:
    return json.loads(written(pid_file))


class TestNestedExecutors:
    def test_timeout_stops_what_an_inner_executor_started(self, tmp_path):
        """A timed-out task's inner executor's children, and theirs, are stopped."""
        pid_file = tmp_path / "pids"
        with ForkPerTaskExecutor(1, timeout=3) as ex:
            future = ex.submit(_nested_executor_task, pid_file)
            pids = _read_pids(pid_file)
            with pytest.raises(TaskTimeoutError):
                future.result(timeout=20)
        for pid in pids.values():
            wait_gone(pid, timeout=5)

    def test_cancel_stops_what_an_inner_executor_started(self, tmp_path):
        """A cancelled task's inner executor's children, and theirs, are stopped."""
        pid_file = tmp_path / "pids"
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_nested_executor_task, pid_file)
            pids = _read_pids(pid_file)
            assert all(is_running(pid) for pid in pids.values())
            assert future.cancel()
        for pid in pids.values():
            wait_gone(pid, timeout=5)
