"""What a forked child inherits from its parent, and what it must not act on.

Most tests run a small parent script in a fresh interpreter, because stdio
buffering, atexit, signal handlers and process death are process-wide: they cannot
be observed honestly from inside the pytest process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import logging.handlers
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import OutputReader, is_running, run_script, start_script, wait_for, wait_gone

import forkpool
from forkpool import ChildDiedError, ForkPerTaskExecutor, TaskTimeoutError

if TYPE_CHECKING:
    from typing import Self

# A task that announces its pid (flushed) and then runs far longer than any test.
# The script takes Ctrl-C like an interactive program even when the test runner was
# started in the background, where a shell hands SIGINT down as ignored.
LONG_TASK = """
import os, signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)

def long_task():
    print("child-pid", os.getpid(), flush=True)
    time.sleep(60)
"""


def last_json(stdout: str) -> dict:
    """The report a script prints as its last stdout line."""
    return json.loads(stdout.strip().splitlines()[-1])


def run_python(source: str, *flags: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Like helpers.run_script, with extra interpreter flags (``-W ...``)."""
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Script:
    """A parent script started with helpers.start_script; stdout read with deadlines."""

    def __init__(self, source: str) -> None:
        self.proc = start_script(source)
        self._reader = OutputReader(self.proc.stdout)
        self.stderr = ""

    @property
    def stdout(self) -> str:
        """Everything read from stdout so far."""
        return self._reader.text

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)

    def wait_line(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until stdout holds a line matching ``pattern``; fail after ``timeout``."""
        return self._reader.wait_for(pattern, timeout)

    def child_pid(self) -> int:
        """The pid a LONG_TASK child announced."""
        return int(self.wait_line(r"^child-pid (\d+)$").group(1))

    def finish(self, timeout: float) -> tuple[int, float]:
        """Wait for the script to exit; return its status and how long that took."""
        start = time.monotonic()
        out, self.stderr = self.proc.communicate(timeout=timeout)
        self._reader.text += out
        return self.proc.returncode, time.monotonic() - start


class TestStdio:
    def test_buffered_output_is_never_printed_twice(self):
        """Unflushed parent output appears once; each child's line appears once."""
        result = run_script(
            """
            import sys, forkpool

            sys.stdout.write("before-fork")  # stdout is a pipe: block-buffered
            sys.stderr.write("before-fork-err")  # stderr: line-buffered, no newline

            def task(i):
                print(f"child-line-{i}")
                print(f"child-err-{i}", file=sys.stderr)
                return i

            with forkpool.ForkPerTaskExecutor(2) as ex:
                assert [ex.submit(task, i).result() for i in range(4)] == [0, 1, 2, 3]
            print()
            """
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.count("before-fork") == 1, result.stdout
        assert result.stderr.count("before-fork-err") == 1, result.stderr
        for i in range(4):
            assert result.stdout.count(f"child-line-{i}") == 1, result.stdout
            assert result.stderr.count(f"child-err-{i}") == 1, result.stderr

    def test_racing_writer_output_is_never_duplicated(self):
        """Text a parent thread buffers while children fork is printed exactly once."""
        result = run_script(
            """
            import sys, threading, time, forkpool

            stop = threading.Event()
            written = []

            def writer():
                n = 0
                while not stop.is_set():
                    sys.stdout.write(f"<t{n}>")  # no newline: stays in the buffer
                    written.append(n)
                    n += 1
                    time.sleep(0)  # let other threads have the GIL (see the stress test)

            thread = threading.Thread(target=writer)
            thread.start()
            try:
                with forkpool.ForkPerTaskExecutor(4) as ex:
                    for f in [ex.submit(print, f"child-{i}") for i in range(40)]:
                        f.result(timeout=10)
            finally:
                stop.set()
                thread.join()
            print("\\nwritten", len(written))
            """
        )
        assert result.returncode == 0, result.stderr
        written = int(re.search(r"written (\d+)", result.stdout).group(1))
        tokens = Counter(re.findall(r"<t(\d+)>", result.stdout))
        assert len(tokens) == written
        assert [token for token, count in tokens.items() if count != 1] == []
        # Under PYTHONUNBUFFERED print() writes text and newline separately, so a
        # parent token may land between them; count the children's texts alone.
        children = Counter(re.findall(r"child-(\d+)(?!\d)", result.stdout))
        assert children == Counter({str(i): 1 for i in range(40)})

    def test_unbuffered_child_output_is_not_held_back(self):
        """Under ``python -u`` a task's print reaches the pipe before the task ends."""
        with Script(
            """
            import os, time, forkpool

            def task():
                print("child-pid", os.getpid())  # no flush: -u promises unbuffered
                time.sleep(60)

            ex = forkpool.ForkPerTaskExecutor(1, kill_grace=0.5)
            ex.submit(task)
            time.sleep(60)
            """
        ) as script:
            assert script.wait_line(r"^child-pid \d+$", timeout=5)

    def test_stalled_stdout_and_a_blocked_printer_stall_no_fork(self):
        """With stdout a pipe nobody reads and a thread stuck printing, tasks run and time out."""
        # Buffered (not ``-u``, not PYTHONUNBUFFERED): the stalled stream has a lock.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        script = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent("""
            import select, sys, threading, time
            import forkpool

            # A thread prints more than the pipe holds: it blocks, holding the
            # stream's buffer lock, since nobody reads.
            threading.Thread(target=print, args=("x" * 1_000_000,), daemon=True).start()
            deadline = time.monotonic() + 10
            while select.select([], [1], [], 0)[1] and time.monotonic() < deadline:
                time.sleep(0.01)
            sys.stderr.write("stalled\\n")
            sys.stderr.flush()
            ex = forkpool.ForkPerTaskExecutor(2)
            sys.stderr.write(f"result {ex.submit(pow, 2, 10).result()}\\n")
            sleeper = forkpool.options(timeout=0.5)(time.sleep)
            sys.stderr.write(f"timeout {type(ex.submit(sleeper, 30).exception()).__name__}\\n")
            sys.stderr.flush()
            time.sleep(60)
            """),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=env,
        )
        try:
            stderr = OutputReader(script.stderr)
            stderr.wait_for(r"^stalled$")
            stderr.wait_for(r"^result 1024$")
            stderr.wait_for(r"^timeout TaskTimeoutError$")
        finally:
            script.kill()
            script.wait()
            script.stdout.close()
            script.stderr.close()


class TestAtexit:
    def test_atexit_handlers_run_once_in_the_parent(self):
        """An atexit handler runs exactly once, in the parent, never in a child."""
        result = run_script(
            """
            import atexit, os, sys, forkpool

            atexit.register(lambda: print("atexit-ran", os.getpid(), flush=True))
            print("parent", os.getpid())
            with forkpool.ForkPerTaskExecutor(2) as ex:
                pids = [ex.submit(os.getpid).result() for _ in range(3)]
                assert os.getpid() not in pids
                assert isinstance(ex.submit(sys.exit, 3).exception(), SystemExit)
            """
        )
        assert result.returncode == 0, result.stderr
        parent = re.search(r"^parent (\d+)$", result.stdout, re.MULTILINE).group(1)
        assert re.findall(r"^atexit-ran (\d+)$", result.stdout, re.MULTILINE) == [parent]

    def test_submit_during_interpreter_shutdown_is_refused(self):
        """Submitting from a later atexit handler raises the interpreter-shutdown error."""
        result = run_script(
            """
            import atexit, forkpool

            ex = forkpool.ForkPerTaskExecutor(2)

            def late_submit():  # registered first, so it runs after forkpool's hook
                try:
                    ex.submit(int)
                except RuntimeError as exc:
                    print("refused:", exc)

            atexit.register(late_submit)
            assert ex.submit(int, "7").result() == 7
            """
        )
        assert result.returncode == 0, result.stderr
        expected = "refused: cannot schedule new futures after interpreter shutdown"
        assert expected in result.stdout


class TestParentDeath:
    def test_parent_sigkill_takes_the_child_down(self):
        """SIGKILL of the parent ends its running child within a second (PDEATHSIG)."""
        program = """
            import forkpool
            ex = forkpool.ForkPerTaskExecutor(1)
            ex.submit(long_task)
            time.sleep(60)
            """
        with Script(LONG_TASK + textwrap.dedent(program)) as script:
            child = script.child_pid()
            assert is_running(child)
            script.proc.kill()
            script.proc.wait(timeout=5)
            wait_gone(child, timeout=1.5)


INTERRUPT_IN_WITH = """
import forkpool
fut = None
try:
    with forkpool.ForkPerTaskExecutor(1, kill_grace=1.0) as ex:
        fut = ex.submit(long_task)
        os.write(1, b"submitted\\n")  # one write: the child prints to the same pipe
        fut.result()
except KeyboardInterrupt:
    exc = fut.exception(timeout=0)  # the with block waited for the child's reaping
    print("interrupted", type(exc).__name__, flush=True)
    raise
"""

INTERRUPT_WITHOUT_WITH = """
import atexit, forkpool
ex = forkpool.ForkPerTaskExecutor(1, kill_grace=1.0)
fut = None
# Registered before the first submit, so it runs after forkpool's own atexit hook.
atexit.register(lambda: print("interrupted", type(fut.exception(timeout=0)).__name__))
fut = ex.submit(long_task)
os.write(1, b"submitted\\n")  # one write: the child prints to the same pipe
fut.result()
"""


class TestCtrlC:
    @pytest.mark.parametrize(
        "program", [INTERRUPT_IN_WITH, INTERRUPT_WITHOUT_WITH], ids=["with", "without-with"]
    )
    def test_sigint_stops_the_child_and_exits_promptly(self, program):
        """SIGINT while blocked on result() ends the program soon and stops the child."""
        with Script(LONG_TASK + program) as script:
            child = script.child_pid()
            # The child may start before submit() returns; a Ctrl-C inside submit()
            # would leave the script without its future.
            script.wait_line(r"^submitted$")
            script.proc.send_signal(signal.SIGINT)
            status, elapsed = script.finish(timeout=10)
            assert status in (-signal.SIGINT, 1), script.stderr
            assert elapsed < 4, f"took {elapsed:.1f}s to exit after SIGINT"
            assert "KeyboardInterrupt" in script.stderr
            # Reaped by the library before exit, not merely killed later by PDEATHSIG.
            assert "interrupted ChildDiedError" in script.stdout, script.stderr
            wait_gone(child, timeout=1.5)


class TestSignals:
    def test_forkpool_threads_leave_signals_to_the_main_thread(self):
        """The supervisor thread blocks catchable signals, so Ctrl-C reaches the main thread."""
        with ForkPerTaskExecutor(1) as ex:
            ex.submit(os.getpid).result(timeout=10)
            (supervisor,) = [t for t in threading.enumerate() if t.name == "forkpool-supervisor"]
            status = Path(f"/proc/self/task/{supervisor.native_id}/status").read_text()
        blocked = int(
            next(line for line in status.splitlines() if line.startswith("SigBlk")).split()[1], 16
        )
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGUSR1):
            assert blocked & (1 << (signum - 1)), signal.Signals(signum).name

    def test_parent_handlers_never_run_in_a_child(self):
        """A child starts with default dispositions, nothing blocked, no parent handler."""
        result = run_script(
            """
            import json, os, signal, time, forkpool

            def parent_handler(signum, frame):
                print("PARENT HANDLER", signum, os.getpid(), flush=True)

            signal.signal(signal.SIGTERM, parent_handler)
            signal.signal(signal.SIGUSR1, parent_handler)

            def dispositions():
                names = ("SIGTERM", "SIGUSR1", "SIGINT")
                default = {n: signal.getsignal(getattr(signal, n)) == signal.SIG_DFL for n in names}
                return default, sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))

            def kill_self():
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(10)  # SIGUSR1's default action ends the child before this ends
                return "survived"

            with forkpool.ForkPerTaskExecutor(2, kill_grace=1.0) as ex:
                default, blocked = ex.submit(dispositions).result(timeout=10)
                exc = ex.submit(kill_self).exception(timeout=10)
            report = {"default": default, "blocked": blocked, "error": type(exc).__name__}
            print(json.dumps(dict(report, signal=getattr(exc, "signal", None))))
            """
        )
        assert result.returncode == 0, result.stderr
        assert "PARENT HANDLER" not in result.stdout
        report = last_json(result.stdout)
        assert report["default"] == {"SIGTERM": True, "SIGUSR1": True, "SIGINT": True}
        assert report["blocked"] == []
        assert report["error"] == ChildDiedError.__name__
        assert report["signal"] == signal.SIGUSR1

    def test_sigterm_right_after_fork_never_reaches_a_parent_handler(self):
        """SIGTERM sent the instant the pid is known kills the child by default action."""
        result = run_script(
            """
            import json, os, signal, time, forkpool

            signal.signal(signal.SIGTERM, lambda *_: print("PARENT HANDLER", flush=True))

            def term_at_once(fn, args, kwargs, pid):
                os.kill(pid, signal.SIGTERM)

            with forkpool.ForkPerTaskExecutor(4, parent_post_fork=term_at_once) as ex:
                futures = [ex.submit(time.sleep, 30) for _ in range(20)]
                errors = [f.exception(timeout=10) for f in futures]
            print(json.dumps([getattr(e, "signal", repr(e)) for e in errors]))
            """
        )
        assert result.returncode == 0, result.stderr
        assert "PARENT HANDLER" not in result.stdout
        assert last_json(result.stdout) == [signal.SIGTERM] * 20

    def test_asyncio_wakeup_fd_is_cleared_in_the_child(self):
        """A wake-up fd set by asyncio in the parent is not set in the child."""

        def wakeup_fd_in_child() -> int:
            return signal.set_wakeup_fd(-1)

        async def main() -> tuple[int, int]:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR2, lambda: None)  # sets the wake-up fd
            try:
                parent_fd = signal.set_wakeup_fd(-1)
                signal.set_wakeup_fd(parent_fd)
                with ForkPerTaskExecutor(1) as ex:
                    child_fd = await loop.run_in_executor(ex, wakeup_fd_in_child)
            finally:
                loop.remove_signal_handler(signal.SIGUSR2)
            return parent_fd, child_fd

        parent_fd, child_fd = asyncio.run(main())
        assert parent_fd != -1  # the precondition: the parent had one
        assert child_fd == -1


class TestWarnings:
    @pytest.mark.parametrize(
        ("flags", "in_script"),
        [
            (("-W", "error::DeprecationWarning"), ""),
            (("-W", "always"), ""),
            ((), "warnings.simplefilter('always')"),  # set after import, as pytest does
        ],
        ids=["W-error", "W-always", "simplefilter-after-import"],
    )
    def test_multithreaded_fork_warning_never_reaches_users(self, flags, in_script):
        """Python 3.12+'s multi-threaded fork() DeprecationWarning is never shown."""
        # Before 3.12 CPython has no such warning and this passes trivially.
        result = run_python(
            f"""
            import warnings, forkpool
            {in_script}
            with forkpool.ForkPerTaskExecutor(2) as ex:
                assert [ex.submit(pow, i, 2).result() for i in range(4)] == [0, 1, 4, 9]
            """,
            *flags,
        )
        assert result.returncode == 0, result.stderr
        assert "multi-threaded" not in result.stderr
        assert "DeprecationWarning" not in result.stderr

    @pytest.mark.slow
    @pytest.mark.timeout(120)
    @pytest.mark.parametrize(
        "flags",
        [("-W", "error"), ("-W", "always"), ("-X", "dev"), ("-X", "dev", "-W", "error")],
        ids=["W-error", "W-always", "X-dev", "X-dev-W-error"],
    )
    def test_other_threads_swapping_filters_cannot_race_the_silencing(self, flags):
        """A thread looping in catch_warnings(): every task returns, none stays pending, silent.

        On 3.15 the warning is an exception under -W error, raised in the parent after
        the child exists; a raced filter would lose that child and its future.
        """
        result = run_python(
            """
            import concurrent.futures, logging, os, threading, warnings, forkpool

            stop = threading.Event()

            def swap_filters():
                while not stop.is_set():
                    with warnings.catch_warnings():
                        pass
                    with warnings.catch_warnings(record=True):
                        warnings.simplefilter("always")

            # Warnings shown through logging: a thread holds warnings' lock, then
            # a handler's, while forkpool takes them the other way round.
            logging.captureWarnings(True)
            logging.getLogger("py.warnings").addHandler(logging.FileHandler(os.devnull))

            def warn_through_logging():
                while not stop.is_set():
                    try:
                        warnings.warn("from a thread", UserWarning)
                    except UserWarning:
                        pass

            swappers = [threading.Thread(target=swap_filters)]
            swappers.append(threading.Thread(target=warn_through_logging))
            for thread in swappers:
                thread.start()
            try:
                with forkpool.ForkPerTaskExecutor(4) as ex:
                    futures = [ex.submit(os.getpid) for _ in range(150)]
                    done, pending = concurrent.futures.wait(futures, timeout=60)
                    if pending:  # say where things stand, then fail
                        import faulthandler, subprocess
                        faulthandler.dump_traceback(all_threads=True)
                        columns = "pid,stat,wchan:32,etime,comm"
                        subprocess.run(["ps", "-o", columns, "--ppid", str(os.getpid())])
                    assert not pending, f"{len(pending)} futures pending"
                    pids = {f.result() for f in futures}
                    assert len(pids) == 150
            finally:
                stop.set()
                for thread in swappers:
                    thread.join()
            print("all returned")
            """,
            *flags,
            timeout=90,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "all returned"
        if sys.version_info >= (3, 14) or "error" in flags:
            # 3.12 and 3.13 have no lock to hold off the other threads' swaps: a lost
            # race may show the warning (never raise it: CPython discards it as an
            # error there), as _quiet_fork says.
            assert "multi-threaded" not in result.stderr
            assert "DeprecationWarning" not in result.stderr

    @pytest.mark.skipif(
        sys.version_info < (3, 15), reason="before 3.15 CPython discards the warning as an error"
    )
    def test_a_child_whose_fork_raised_the_warning_is_still_supervised(self):
        """3.15: if fork() raises its warning anyway, the child it made is found and run."""
        result = run_python(
            """
            import os, threading, time, warnings, forkpool

            # An at-fork hook that makes every warning an error, ahead of any filter
            # set before the fork: fork()'s own warning is then raised in the parent.
            os.register_at_fork(before=lambda: warnings.simplefilter("error"))
            with forkpool.ForkPerTaskExecutor(2) as ex:
                futures = [ex.submit(os.getpid) for _ in range(6)]
                for future in futures:
                    assert future.result(timeout=20) == future.pid, future
            print("supervised")
            """,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "supervised"


class TestStress:
    @pytest.mark.slow
    def test_logging_and_printing_threads_never_deadlock_children(self):
        """200 tasks finish correctly while 4 threads log and one prints non-stop."""
        result = run_script(
            """
            import logging, sys, threading, time, forkpool

            logging.basicConfig(level=logging.INFO, stream=sys.stderr)
            log = logging.getLogger("stress")
            stop = threading.Event()

            def chatter(n):
                while not stop.is_set():
                    log.info("thread %d is logging", n)

            def printer():
                while not stop.is_set():
                    print("printer thread line")
                    # Block-buffered prints rarely release the GIL; without a yield
                    # this thread starves every other one (CPython's GIL convoy)
                    # and the test measures that instead of fork safety.
                    time.sleep(0)

            threads = [threading.Thread(target=chatter, args=(n,)) for n in range(4)]
            threads.append(threading.Thread(target=printer))
            for thread in threads:
                thread.start()

            def task(i):
                log.info("task %d logs", i)
                print("task", i, "prints")
                return i * i

            try:
                with forkpool.ForkPerTaskExecutor(4) as ex:
                    futures = [ex.submit(task, i) for i in range(200)]
                    results = [f.result(timeout=20) for f in futures]
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
            assert results == [i * i for i in range(200)], results
            print("all-200-correct")
            """,
            timeout=45,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.rstrip().endswith("all-200-correct")
        assert result.stderr.count(" logs") == 200  # every task's log record arrived

    def test_a_task_makes_an_executor_while_a_parent_thread_holds_the_exit_registry(self):
        """A lock of forkpool's that a parent thread held at fork is free in the child.

        Every executor's creation and shutdown takes the interpreter-exit registry's
        lock; parent threads making executors (per request, per joblib call) hold it
        at some fork sooner or later. Here one holds it across the fork.
        """
        holding, release = threading.Event(), threading.Event()

        def hold_the_registry():
            with forkpool._exit._lock:
                holding.set()
                release.wait(30)

        ex = ForkPerTaskExecutor(1, timeout=10)
        holder = threading.Thread(target=hold_the_registry)
        holder.start()
        try:
            assert holding.wait(5)
            pid = ex.submit(_pid_from_a_nested_executor).result(timeout=30)
        finally:
            release.set()
            holder.join()
            ex.shutdown()
        assert isinstance(pid, int)
        assert pid != os.getpid()

    @pytest.mark.slow
    @pytest.mark.timeout(120)
    def test_a_file_handlers_records_land_once_in_its_file_under_200_threads(self, tmp_path):
        """200 parent threads log, print and warn while tasks fork: every task's record
        reaches the log file once, and never a file the task opened itself."""
        result = run_script(
            f"""
            import logging, os, sys, threading, time, warnings, forkpool

            log_path = {str(tmp_path / "app.log")!r}
            handler = logging.FileHandler(log_path)
            logging.getLogger().addHandler(handler)
            logging.getLogger().setLevel(logging.INFO)
            log = logging.getLogger("app")
            stop = threading.Event()

            def busy(n):
                while not stop.is_set():
                    if n % 4 == 0:
                        log.info("parent thread %d", n)
                    elif n % 4 == 1:
                        logging.getLogger(f"made.{{n}}.{{os.urandom(2).hex()}}")
                    elif n % 4 == 2:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            warnings.warn("w")
                    else:
                        print("parent thread", n, file=sys.stderr)
                    # Without a pause, 200 spinning threads starve the rest for whole
                    # seconds on Pythons before 3.14 (the GIL convoy).
                    time.sleep(0.001)

            def task(i):
                own = open(os.path.join({str(tmp_path)!r}, f"task-{{i}}.out"), "w")
                log.info("record of task %d", i)
                handler.flush()
                own.write("task output\\n")
                own.close()
                return i

            threads = [threading.Thread(target=busy, args=(n,)) for n in range(200)]
            for thread in threads:
                thread.start()
            try:
                with forkpool.ForkPerTaskExecutor(2) as ex:
                    futures = [ex.submit(task, i) for i in range(30)]
                    results = [f.result(timeout=60) for f in futures]
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
            assert results == list(range(30)), results
            print("done")
            """,
            timeout=110,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        log_text = (tmp_path / "app.log").read_text()
        for i in range(30):
            assert log_text.count(f"record of task {i}\n") == 1, i
            assert (tmp_path / f"task-{i}.out").read_text() == "task output\n", i


def _pid_from_a_nested_executor() -> int:
    with ForkPerTaskExecutor(1) as inner:
        return inner.submit(os.getpid).result(timeout=10)


def _held_elsewhere(lock: threading.RLock) -> bool:
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


class TestBusyHandler:
    def test_handler_stuck_mid_write_at_fork_does_not_hang_the_child(self):
        """A thread blocked inside a handler's write at fork time cannot hang the child."""
        read_fd, write_fd = os.pipe()
        stream = os.fdopen(write_fd, "w", buffering=1 << 16)
        handler = logging.StreamHandler(stream)
        log = logging.getLogger("forkpool-test-busy-handler")
        log.addHandler(handler)
        log.propagate = False
        drained = bytearray()

        def drain():
            while data := os.read(read_fd, 1 << 16):
                drained.extend(data)

        drainer = threading.Thread(target=drain)
        # The pipe holds 64 KiB; a 1 MiB record blocks this thread inside
        # stream.write, holding the handler's lock and the stream's buffer lock.
        stuck = threading.Thread(target=log.warning, args=("x" * (1 << 20),))
        stuck.start()
        try:
            wait_for(lambda: _held_elsewhere(handler.lock), 10, "the writer to block")
            with ForkPerTaskExecutor(1) as ex:
                future = ex.submit(log.warning, "from the child")
                wait_for(lambda: future.pid is not None, 10, "the fork")
                drainer.start()
                assert future.result(timeout=20) is None
        finally:
            if not drainer.is_alive() and not drained:
                drainer.start()
            stuck.join(timeout=20)
            log.removeHandler(handler)
            stream.close()
            drainer.join(timeout=20)
            os.close(read_fd)
        assert b"from the child" in drained


def _submit_from_child(ex: ForkPerTaskExecutor) -> str:
    try:
        ex.submit(int)
    except RuntimeError as exc:
        return str(exc)
    return "submit succeeded"


class TestChildIdentity:
    def test_child_leads_its_own_group_under_the_executor_process(self):
        """The child's pgid is its pid and its parent is the executor's process."""
        with ForkPerTaskExecutor(1) as ex:
            fut = ex.submit(lambda: (os.getpid(), os.getpgid(0), os.getppid()))
            pid, pgid, ppid = fut.result(timeout=10)
        assert pid == fut.pid != os.getpid()
        assert pgid == pid
        assert ppid == os.getpid()

    def test_submit_from_a_child_raises(self):
        """A task using its parent's executor gets a RuntimeError naming the owner."""
        with ForkPerTaskExecutor(1) as ex:
            message = ex.submit(_submit_from_child, ex).result(timeout=10)
        assert "a forked child" in message
        assert f"belongs to process {os.getpid()}" in message

    def test_submit_from_a_child_never_hangs_while_a_parent_thread_submits(self):
        """A child forked while another thread is inside submit() still gets the error."""
        in_submit, release = threading.Event(), threading.Event()

        class SlowToInspect:
            """A callable whose ``__class__`` (read by submit's isinstance) blocks once."""

            @property
            def __class__(self):  # type: ignore[override]
                in_submit.set()
                release.wait(10)
                return SlowToInspect

            def __call__(self) -> str:
                return "ran"

        gate_r, gate_w = os.pipe()
        try:
            with ForkPerTaskExecutor(1, timeout=4, kill_grace=0.5) as ex:
                gate = ex.submit(os.read, gate_r, 1)  # holds the only slot
                victim = ex.submit(_submit_from_child, ex)  # forked when the gate opens
                other = threading.Thread(target=lambda: ex.submit(SlowToInspect()))
                other.start()
                wait_for(in_submit.is_set, 5, "the other thread to be inside submit()")
                os.write(gate_w, b"x")
                wait_for(lambda: victim.pid is not None, 5, "the victim to be forked")
                release.set()
                other.join(timeout=10)
                assert gate.result(timeout=5) == b"x"
                outcome = victim.exception(timeout=10) or victim.result()
        finally:
            release.set()
            os.close(gate_r)
            os.close(gate_w)
        assert not isinstance(outcome, TaskTimeoutError), "the child hung in submit()"
        assert isinstance(outcome, str), repr(outcome)
        assert "a forked child" in outcome


def _log_and_list(logger_name: str) -> dict[int, str]:
    logging.getLogger(logger_name).warning("from the task")
    return _descriptors()


def _descriptors() -> dict[int, str]:
    """What each of this process's descriptors refers to."""
    found = {}
    for fd in list(Path("/proc/self/fd").iterdir()):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed by now
            found[int(fd.name)] = str(fd.readlink())
    return found


class TestCloseFds:
    def test_a_child_keeps_only_what_it_needs(self, tmp_path):
        """close_fds: only stdio, the result pipe, logging's files and pass_fds stay real."""
        kept_file = (tmp_path / "kept").open("w")
        log_file = tmp_path / "task.log"
        handler = logging.FileHandler(log_file)
        logging.getLogger("fptest.close_fds").addHandler(handler)
        left, right = socket.socketpair()
        try:
            with ForkPerTaskExecutor(1, close_fds=True, pass_fds=[kept_file.fileno()]) as ex:
                seen = ex.submit(_descriptors).result(timeout=10)
            inherited = {left.fileno(), right.fileno()}
            assert all(seen[fd] == "/dev/null" for fd in inherited), seen
            assert seen[kept_file.fileno()] == str(tmp_path / "kept")
            assert seen[handler.stream.fileno()] == str(log_file)
            assert not [link for link in seen.values() if link.startswith("socket:")], seen
        finally:
            logging.getLogger("fptest.close_fds").removeHandler(handler)
            handler.close()
            left.close()
            right.close()
            kept_file.close()

    @pytest.mark.parametrize("kind", ["SysLogHandler (UDP)", "SocketHandler (TCP)"])
    def test_logging_handlers_on_sockets_keep_working(self, kind):
        """close_fds keeps a socket handler's socket; the parent's other sockets go."""
        other_left, other_right = socket.socketpair()
        if kind.startswith("SysLog"):
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receiver.bind(("127.0.0.1", 0))
            handler: logging.Handler = logging.handlers.SysLogHandler(receiver.getsockname())
            endpoint = handler.socket  # type: ignore[attr-defined]
        else:
            receiver = socket.create_server(("127.0.0.1", 0))
            handler = logging.handlers.SocketHandler(*receiver.getsockname())
            handler.sock = handler.makeSocket()  # type: ignore[attr-defined]
            endpoint = handler.sock  # type: ignore[attr-defined]
        receiver.settimeout(10)
        log = logging.getLogger("fptest.close_fds.sockets")
        log.addHandler(handler)
        log.propagate = False
        try:
            with ForkPerTaskExecutor(1, close_fds=True) as ex:
                seen = ex.submit(_log_and_list, log.name).result(timeout=10)
            if kind.startswith("SysLog"):
                record = receiver.recv(65536)
            else:
                connection, _ = receiver.accept()
                with connection:
                    connection.settimeout(10)
                    record = connection.recv(65536)
            assert b"from the task" in record
            assert seen[endpoint.fileno()].startswith("socket:")
            assert seen[other_left.fileno()] == seen[other_right.fileno()] == "/dev/null"
        finally:
            log.removeHandler(handler)
            handler.close()
            receiver.close()
            other_left.close()
            other_right.close()

    def test_per_callable_close_fds_and_a_task_that_opens_files(self, tmp_path):
        """options(close_fds=True) applies per callable; files the task opens work."""
        left, right = socket.socketpair()

        def open_and_list():
            with (tmp_path / "new").open("w") as new:
                new.write("written")
            return _descriptors()

        try:
            with ForkPerTaskExecutor(1) as ex:
                closing = ex.submit(forkpool.options(close_fds=True)(open_and_list))
                plain = ex.submit(open_and_list)
                assert closing.result(timeout=10)[left.fileno()] == "/dev/null"
                assert plain.result(timeout=10)[left.fileno()].startswith("socket:")
            assert (tmp_path / "new").read_text() == "written"
        finally:
            left.close()
            right.close()

    @pytest.mark.parametrize(
        ("kwargs", "error", "message"),
        [
            ({"close_fds": 1}, TypeError, "close_fds must be True or False"),
            ({"pass_fds": 3}, TypeError, "pass_fds must be an iterable"),
            ({"pass_fds": [-1]}, ValueError, "pass_fds must hold descriptor numbers"),
        ],
    )
    def test_bad_settings(self, kwargs, error, message):
        """Bad close_fds or pass_fds values fail at the call, naming the setting."""
        with pytest.raises(error, match=message):
            ForkPerTaskExecutor(**kwargs)
        with pytest.raises(error, match=message):
            forkpool.options(**kwargs)
