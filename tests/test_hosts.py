"""forkpool where heavy jobs run: job-queue workers, prefork servers, web servers.

Real workers and servers, started and stopped by the tests: a Dramatiq worker on a
Redis broker, gunicorn and uvicorn.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
from helpers import OwnServer, free_port, run_script, wait_for, wait_gone

from forkpool import ChildDiedError, ForkPerTaskExecutor, PerProcessExecutor

TESTS = Path(__file__).resolve().parent


def _nap(seconds: float) -> str:
    time.sleep(seconds)
    return "napped"


class _Deadline(Exception):
    """Raised into a waiting thread, as a job queue's time limit is."""


def _inside(thread: threading.Thread, function: str) -> bool:
    """``thread`` is running ``function`` right now."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def _raise_in(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    ident = ctypes.c_ulong(thread.ident or 0)
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    assert set_async_exc(ident, ctypes.py_object(exc_type)) == 1


class TestInterruptibleWaits:
    def test_an_exception_raised_into_a_waiting_thread_lands_and_stops_the_child(self):
        """An asynchronous exception reaches a thread blocked in result() and stops its task."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_nap, 30)
            wait_for(lambda: future.pid is not None, 10, "the fork")
            outcome: list[object] = []

            def wait() -> None:
                try:
                    future.result()
                except _Deadline as exc:
                    outcome.append((exc, time.monotonic()))

            waiter = threading.Thread(target=wait)
            waiter.start()
            wait_for(lambda: _inside(waiter, "_wait"), 5, "the waiter inside result()")
            raised_at = time.monotonic()
            _raise_in(waiter, _Deadline)
            waiter.join(timeout=5)
            assert not waiter.is_alive()
            ((_exc, landed_at),) = outcome
            assert landed_at - raised_at < 0.5
            error = future.exception(timeout=10)
        assert isinstance(error, ChildDiedError)
        assert error.stopped_by == "an exception that ended the wait for its result (_Deadline)"
        wait_gone(future.pid, timeout=5)

    def test_a_signal_handler_ends_the_wait_and_stops_the_child(self):
        """A signal handler raising during result() ends it at once and stops the child."""
        done = run_script(
            """
            import signal, time
            import forkpool

            class Alarm(Exception):
                pass

            def on_alarm(signum, frame):
                raise Alarm

            signal.signal(signal.SIGALRM, on_alarm)
            with forkpool.ForkPerTaskExecutor(1) as ex:
                future = ex.submit(time.sleep, 30)
                signal.setitimer(signal.ITIMER_REAL, 0.5)
                started = time.monotonic()
                try:
                    future.result()
                except Alarm:
                    print(f"{time.monotonic() - started:.2f}", flush=True)
                print(type(future.exception(timeout=10)).__name__, flush=True)
            """
        )
        assert done.returncode == 0, done.stderr
        elapsed, outcome = done.stdout.split()
        assert float(elapsed) < 1.5
        assert outcome == "ChildDiedError"

    def test_a_timeout_on_result_does_not_stop_the_child(self):
        """result(timeout=...) expiring is the caller's choice to wait less: the task runs on."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(_nap, 0.5)
            with pytest.raises(concurrent.futures.TimeoutError):  # not builtin on 3.10
                future.result(timeout=0.05)
            assert future.result(timeout=10) == "napped"

    @pytest.mark.hosts
    def test_a_dramatiq_time_limit_lands_while_waiting(self):
        """A real Dramatiq worker's 2 s time limit cuts a 30 s forkpool task short."""
        server = OwnServer()
        server.start()
        report = f"fptest-dramatiq-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, "FORKPOOL_TEST_BROKER": server.url, "PYTHONPATH": str(TESTS)}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "dramatiq_actors",
                "--processes",
                "1",
                "--threads",
                "1",
            ],
            cwd=TESTS,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis.from_url(server.url)
        try:
            enqueue = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"import dramatiq_actors; dramatiq_actors.blocking_task.send({report!r})",
                ],
                cwd=TESTS,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert enqueue.returncode == 0, enqueue.stderr
            wait_for(lambda: client.hget(report, "limited_after"), 30, "the time limit")
            limited_after = float(client.hget(report, "limited_after"))
            child = int(client.hget(report, "child"))
            assert limited_after < 3.5, limited_after
            wait_gone(child, timeout=10)
            print(f"\nDramatiq's 2 s time limit landed after {limited_after:.2f}s")
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            client.close()
            server.stop()


def _report_pids() -> tuple[int, int]:
    return os.getpid(), os.getppid()


class TestPerProcessExecutor:
    def test_each_forked_process_gets_its_own(self, tmp_path):
        """One module-level executor serves the parent and each forked worker, each its own."""
        done = run_script(
            f"""
            import json, os
            import forkpool

            EXECUTOR = forkpool.PerProcessExecutor(1)

            def child_and_parent():
                return os.getpid(), os.getppid()

            results = {{}}
            workers = []
            for n in range(2):
                pid = os.fork()
                if pid == 0:  # a prefork worker
                    pids = EXECUTOR.submit(child_and_parent).result(timeout=20)
                    EXECUTOR.shutdown()
                    with open({str(tmp_path)!r} + f"/worker-{{os.getpid()}}", "w") as out:
                        json.dump(pids, out)
                    os._exit(0)
                workers.append(pid)
            for pid in workers:
                os.waitpid(pid, 0)
            mine = EXECUTOR.submit(child_and_parent).result(timeout=20)
            EXECUTOR.shutdown()
            print(json.dumps({{"me": os.getpid(), "mine": mine, "workers": workers}}))
            """
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["mine"][1] == report["me"]
        for worker in report["workers"]:
            task_pid, task_parent = json.loads((tmp_path / f"worker-{worker}").read_text())
            assert task_parent == worker
            assert task_pid != worker

    def test_arguments_are_checked_at_once_and_nothing_starts(self):
        """Bad settings fail at definition; a good one starts no thread until used."""
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            PerProcessExecutor(0)
        with pytest.raises(ValueError, match="unsupported Redis URL"):
            PerProcessExecutor(redis="http://nowhere")
        before = threading.active_count()
        lazy = PerProcessExecutor(1, redis="redis://127.0.0.1:1/0")
        assert threading.active_count() == before
        assert "not used in this process yet" in repr(lazy)

    def test_used_like_an_executor(self):
        """submit, map and the context manager work as on ForkPerTaskExecutor."""
        with PerProcessExecutor(2) as ex:
            assert ex.submit(pow, 2, 5).result(timeout=10) == 32
            assert list(ex.map(abs, [-1, -2], chunksize=2)) == [1, 2]
            assert ex.executor.submit(_report_pids).result(timeout=10)[1] == os.getpid()
        assert "not used in this process yet" in repr(ex)


def _server(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=TESTS,
        env={**os.environ, "PYTHONPATH": str(TESTS), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(lambda: _accepts(port) or process.poll() is not None, 30, f"a server on {port}")
    assert process.poll() is None, f"{args[0]} exited with {process.returncode}"
    return process


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _get(conn: socket.socket) -> bytes:
    """One keep-alive GET on ``conn``; the body."""
    conn.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += conn.recv(4096)
    return body


@pytest.mark.hosts
class TestWebServers:
    @pytest.mark.parametrize("close_fds", [True, False], ids=["close_fds", "inherited"])
    def test_a_keep_alive_client_sees_eof_when_the_server_closes(self, close_fds):
        """Under uvicorn, with close_fds the child holds no client socket: EOF comes at once."""
        port = free_port()
        server = _server(
            [
                "uvicorn",
                "asgi_app:app",
                "--port",
                str(port),
                "--timeout-keep-alive",
                "1",
                "--lifespan",
                "off",
            ],
            {"FORKPOOL_TEST_CLOSE_FDS": "1" if close_fds else "0"},
            port,
        )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
                child = int(_get(conn))
                answered = time.monotonic()
                held = [str(fd.readlink()) for fd in Path(f"/proc/{child}/fd").iterdir()]
                assert conn.recv(1) == b""  # the server's keep-alive timeout, 1 s
                eof_after = time.monotonic() - answered
        finally:
            _stop(server)
        sockets = [link for link in held if link.startswith("socket:") or "eventpoll" in link]
        if close_fds:
            assert eof_after < 2.5, eof_after
            assert sockets == [], held
        else:  # the child's copy kept the connection open until it exited, 4 s in
            assert eof_after > 2.5, eof_after
            assert sockets
        wait_gone(child, timeout=10)

    def test_a_module_level_executor_under_gunicorn_preload(self):
        """gunicorn --preload makes the executor in the master; each worker gets its own."""
        port = free_port()
        server = _server(
            ["gunicorn", "--preload", "-w", "2", "-b", f"127.0.0.1:{port}", "wsgi_app:app"],
            {},
            port,
        )
        workers: dict[int, tuple[int, int]] = {}
        try:
            deadline = time.monotonic() + 30
            while len(workers) < 2 and time.monotonic() < deadline:
                with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
                    worker, child, parent = (int(n) for n in _get(conn).split())
                workers[worker] = (child, parent)
        finally:
            _stop(server)
        assert len(workers) == 2, workers
        for worker, (child, parent) in workers.items():
            assert parent == worker
            assert child != worker
