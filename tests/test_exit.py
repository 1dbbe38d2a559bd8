"""The concurrent.futures contract at shutdown and at interpreter exit."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import OutputReader, is_running, run_script, start_script, wait_for, wait_gone

from forkpool import ForkPerTaskExecutor

# Python 3.12.0-3.12.2 refuse fork() from the moment the interpreter begins to exit
# (gh-104690; 3.12.3 relaxed it, gh-113964): queued tasks cannot start then.
EXIT_REFUSES_FORK = (3, 12, 0) <= sys.version_info[:3] < (3, 12, 3)
needs_fork_at_exit = pytest.mark.skipif(
    EXIT_REFUSES_FORK, reason="this Python refuses fork() during interpreter exit"
)


class TestInterpreterExit:
    @needs_fork_at_exit
    def test_work_survives_shutdown_without_wait(self):
        """After shutdown(wait=False), the exit hook waits for the running task."""
        done = run_script(
            """
            import os, sys, time
            from forkpool import ForkPerTaskExecutor

            def sleep_and_print(seconds, message):
                print(os.getpid(), flush=True)
                time.sleep(seconds)
                print(message, flush=True)

            ex = ForkPerTaskExecutor(3)
            ex.submit(sleep_and_print, 1.0, "apple")
            ex.shutdown(wait=False)
            """
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        child, message = done.stdout.split()
        assert message == "apple"
        assert not is_running(int(child))

    def test_running_work_survives_shutdown_without_wait(self):
        """A task forked before shutdown(wait=False) finishes before exit, on every Python."""
        done = run_script(
            """
            import time
            from forkpool import ForkPerTaskExecutor

            ex = ForkPerTaskExecutor(1)
            future = ex.submit(lambda: (time.sleep(0.5), print("apple", flush=True)))
            while future.pid is None:
                time.sleep(0.01)
            ex.shutdown(wait=False)
            """
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert done.stdout.strip() == "apple"

    @pytest.mark.skipif(not EXIT_REFUSES_FORK, reason="this Python forks during exit")
    def test_queued_work_this_python_cannot_fork_at_exit_is_reported(self):
        """Where exit refuses fork(), queued tasks fail with one clear warning, no crash."""
        done = run_script(
            """
            import logging, time
            from forkpool import ForkPerTaskExecutor

            logging.basicConfig(level=logging.WARNING)
            ex = ForkPerTaskExecutor(1)
            running = ex.submit(lambda: (time.sleep(0.5), print("ran", flush=True)))
            while running.pid is None:
                time.sleep(0.01)
            for n in range(3):
                ex.submit(print, n, flush=True)
            ex.shutdown(wait=False)
            """
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["ran"]
        assert done.stderr.count("forkpool cannot start the tasks still queued") == 1
        assert "supervisor failed" not in done.stderr

    @needs_fork_at_exit
    def test_queued_work_survives_shutdown_without_wait(self):
        """Tasks still queued at shutdown(wait=False) run before the interpreter exits."""
        done = run_script(
            """
            from forkpool import ForkPerTaskExecutor

            ex = ForkPerTaskExecutor(1)
            for n in range(4):
                ex.submit(print, n, flush=True)
            ex.shutdown(wait=False)
            """
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["0", "1", "2", "3"]

    def test_ctrl_c_stops_the_wait_at_exit(self):
        """Ctrl-C while the exit hook waits stops the children and ends the process."""
        script = start_script(
            """
            import os, time
            from forkpool import ForkPerTaskExecutor

            # One write(2) each: the child and the parent share the pipe.
            def nap():
                os.write(1, f"child {os.getpid()}\\n".encode())
                time.sleep(60)

            ex = ForkPerTaskExecutor(1)
            future = ex.submit(nap)
            while future.pid is None:  # forked before exit begins, on every Python
                time.sleep(0.01)
            ex.shutdown(wait=False)
            os.write(1, b"exiting\\n")
            """
        )
        try:
            stdout = OutputReader(script.stdout)
            child = int(stdout.wait_for(r"^child (\d+)$").group(1))
            stdout.wait_for(r"^exiting$")
            # The main thread has reached the exit hook's wait on the supervisor.
            wait_for(lambda: "futex" in _wchan(script.pid), 10, "the exit hook's wait")
            # A user presses Ctrl-C until the program ends; once must be enough.
            deadline = time.monotonic() + 10
            interrupts = 0
            while script.poll() is None and time.monotonic() < deadline:
                script.send_signal(signal.SIGINT)
                interrupts += 1
                with contextlib.suppress(subprocess.TimeoutExpired):
                    script.wait(timeout=1)
            assert script.poll() is not None, "Ctrl-C did not end the exit wait"
            assert interrupts == 1
            wait_gone(child, timeout=5)
        finally:
            script.kill()
            script.wait()
            script.stdout.close()
            script.stderr.close()

    def test_submit_from_a_late_exit_handler_is_refused(self):
        """An exit handler that runs after the executor's own cannot schedule new work."""
        done = run_script(
            """
            import atexit

            @atexit.register
            def run_last():
                try:
                    ex.submit(id, None)
                except RuntimeError as exc:
                    print(exc)

            from forkpool import ForkPerTaskExecutor
            ex = ForkPerTaskExecutor(2)
            """
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "cannot schedule new futures after interpreter shutdown"


def _wchan(pid: int) -> str:
    """Where in the kernel the process's main thread sleeps."""
    return Path(f"/proc/{pid}/wchan").read_text()


class TestCancelFutures:
    def test_tasks_given_a_slot_at_submit_are_not_cancelled(self):
        """shutdown(cancel_futures=True) cancels only the tasks that found no free slot."""
        blocked = threading.Event()
        release = threading.Event()

        def hold_the_supervisor(_future):
            blocked.set()
            release.wait(10)

        ex = ForkPerTaskExecutor(2)
        try:
            first = ex.submit(os.getpid)
            first.add_done_callback(hold_the_supervisor)
            assert blocked.wait(10), "the done-callback never ran"
            # The supervisor thread is busy in the callback: it forks nothing now.
            burst = [ex.submit(time.sleep, 0.1) for _ in range(10)]
            ex.shutdown(wait=False, cancel_futures=True)
            release.set()
        finally:
            release.set()
            ex.shutdown(wait=True)
        assert [f.cancelled() for f in burst] == [False] * 2 + [True] * 8
        assert [f.result(timeout=10) for f in burst[:2]] == [None, None]
