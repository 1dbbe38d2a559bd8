"""Timeout verdicts follow when the child finished, not when the supervisor looked."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from helpers import OutputReader, proc_state, start_script, wait_for

import forkpool
from forkpool import ForkPerTaskExecutor, TaskTimeoutError


def _nap(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def _report_then_nap(seconds: float, value: object) -> object:
    forkpool.report_progress("started")
    time.sleep(seconds)
    return value


def _slowly_rebuilt(seconds: float) -> str:
    time.sleep(seconds)
    return "rebuilt"


class _SlowToUnpickle:
    """Unpickles (in the parent) by sleeping: a stand-in for a huge result."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self) -> tuple[object, ...]:
        return _slowly_rebuilt, (self.seconds,)


class TestBusySupervisor:
    def test_slow_done_callback(self):
        """A task that finished in time gets its result while a done-callback blocks."""
        with ForkPerTaskExecutor(2) as ex:
            timely = ex.submit(forkpool.options(timeout=1.5)(_nap), 0.2, "timely")
            entered = threading.Event()

            def hold(_future):
                entered.set()
                time.sleep(3)

            ex.submit(os.getpid).add_done_callback(hold)
            assert entered.wait(10)
            assert timely.result(timeout=20) == "timely"

    def test_slow_progress_callback(self):
        """A task that finished in time gets its result while a progress callback blocks."""
        with ForkPerTaskExecutor(2) as ex:
            timely = ex.submit(forkpool.options(timeout=1.5)(_nap), 0.5, "timely")
            entered = threading.Event()

            def hold(_future, _value):
                entered.set()
                time.sleep(3)

            slow_reporter = ex.submit(_report_then_nap, 0, "reported")
            slow_reporter.add_progress_callback(hold)
            assert entered.wait(10)
            assert timely.result(timeout=20) == "timely"
            assert slow_reporter.result(timeout=20) == "reported"

    def test_slow_unpickling_of_another_result(self):
        """A task that finished in time gets its result while another result unpickles."""
        with ForkPerTaskExecutor(2) as ex:
            timely = ex.submit(forkpool.options(timeout=1.5)(_nap), 0.5, "timely")
            heavy = ex.submit(_SlowToUnpickle, 3.0)
            assert heavy.result(timeout=20) == "rebuilt"
            assert timely.result(timeout=20) == "timely"

    def test_a_task_that_overran_still_times_out(self):
        """A task that finished after its deadline fails with TaskTimeoutError, late or not."""
        with ForkPerTaskExecutor(2) as ex:
            overran = ex.submit(forkpool.options(timeout=0.5)(_nap), 1.0, "late")
            entered = threading.Event()

            def hold(_future):
                entered.set()
                time.sleep(2.5)

            ex.submit(os.getpid).add_done_callback(hold)
            assert entered.wait(10)
            with pytest.raises(TaskTimeoutError):
                overran.result(timeout=20)


def test_parent_stopped_past_the_deadline():
    """A parent SIGSTOPped past a task's deadline still gets the result finished in time."""
    parent = start_script(
        """
        import os, time
        import forkpool

        def nap():
            print(os.getpid(), flush=True)
            time.sleep(0.5)
            return "in time"

        with forkpool.ForkPerTaskExecutor(1, timeout=2) as ex:
            future = ex.submit(nap)
            try:
                print(future.result(), flush=True)
            except Exception as exc:
                print(type(exc).__name__, flush=True)
        """
    )
    try:
        stdout = OutputReader(parent.stdout)
        child = int(stdout.wait_for(r"^(\d+)$").group(1))
        started = time.monotonic()
        os.kill(parent.pid, signal.SIGSTOP)
        # The child finishes (a zombie: its parent is stopped) and the deadline passes.
        wait_for(lambda: proc_state(child) == "Z", 10, "the child to finish")
        wait_for(lambda: time.monotonic() > started + 5, 10, "five seconds stopped")
        os.kill(parent.pid, signal.SIGCONT)
        verdict = stdout.wait_for(r"^(in time|TaskTimeoutError)$").group(1)
        assert verdict == "in time"
        assert parent.wait(timeout=10) == 0
    finally:
        parent.send_signal(signal.SIGCONT)
        parent.kill()
        parent.wait()
        parent.stdout.close()
        parent.stderr.close()
