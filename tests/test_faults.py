"""The fault matrix: every way a task or its surroundings can fail ends in a known outcome."""

from __future__ import annotations

import io
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import CancelledError, wait
from pathlib import Path

import pytest
import redis
from helpers import start_script, wait_for, wait_gone

import forkpool
from forkpool import ChildDiedError, ForkPerTaskExecutor
from forkpool._entry import Keys
from forkpool._progress import _ChildState


def _pipe_fd() -> int:
    channel = _ChildState.channel
    assert channel is not None
    return channel.fd


def _io_count(pid: int | str, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    return int(next(line for line in text.splitlines() if line.startswith(field)).split()[1])


# write(2)'s number, as /proc/<pid>/syscall shows the call a process sleeps in.
_WRITE_SYSCALL = {"x86_64": "1", "aarch64": "64"}.get(platform.machine(), "1")


def _blocked_in_pipe_write(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] == _WRITE_SYSCALL
    except (OSError, IndexError):
        return False


class TestChildDeathTimings:
    def test_killed_mid_write_of_a_large_result(self):
        """A child killed while the parent reads its 256 MiB result fails, cut short."""
        size = 256 << 20
        with ForkPerTaskExecutor(1) as ex:
            read_before = _io_count("self", "rchar")
            future = ex.submit(lambda: b"x" * size)
            wait_for(lambda: future.pid is not None, 10, "the fork")
            # The child writes its result in one write() call, which the supervisor
            # drains 1 MiB per read(): watch this process's reads, freeze the child
            # once 8 MiB have arrived, check it is still mid-write, then kill it.
            deadline = time.monotonic() + 20
            while _io_count("self", "rchar") - read_before < 8 << 20:
                assert time.monotonic() < deadline, "the result never started to arrive"
            os.kill(future.pid, signal.SIGSTOP)
            assert _io_count("self", "rchar") - read_before < size, "it all arrived first"
            os.kill(future.pid, signal.SIGKILL)
            with pytest.raises(ChildDiedError) as info:
                future.result(timeout=20)
        assert info.value.signal == signal.SIGKILL
        assert "its result was cut short" in str(info.value)

    def test_killed_after_writing_but_before_exit(self):
        """A result fully written before the child is killed is still the outcome."""

        def finish_then_hang() -> str:
            # A stdout whose final flush blocks: nothing reads this pipe.
            reader, writer = os.pipe()
            sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(writer, "w"), 1 << 21))
            sys.stdout.write("x" * (1 << 20))
            _ChildState.keep = reader  # type: ignore[attr-defined]
            return "written"

        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(finish_then_hang)
            wait_for(lambda: future.pid is not None, 10, "the fork")
            try:
                # Blocked in write(2) on the pipe nobody reads: the final flush.
                wait_for(lambda: _blocked_in_pipe_write(future.pid), 10, "the stuck flush")
                assert not future.done()
            finally:
                os.kill(future.pid, signal.SIGKILL)
            assert future.result(timeout=10) == "written"

    def test_garbage_on_the_result_pipe(self):
        """A task that writes garbage on the result pipe fails with a corrupt-stream error."""
        with ForkPerTaskExecutor(1) as ex:
            future = ex.submit(lambda: os.write(_pipe_fd(), b"this is not a frame") and 1)
            with pytest.raises(ChildDiedError, match="corrupt result stream"):
                future.result(timeout=10)
            assert ex.submit(pow, 2, 5).result(timeout=10) == 32


class TestTaskVandalism:
    @pytest.mark.parametrize(
        "vandalism",
        [
            pytest.param(lambda: (os.close(1), os.close(2)), id="close-stdio"),
            pytest.param(lambda: (sys.stdout.close(), sys.stderr.close()), id="close-sys-streams"),
            pytest.param(
                lambda: os.dup2(os.open(os.devnull, os.O_WRONLY), _pipe_fd()), id="dup2-over-pipe"
            ),
            pytest.param(lambda: os.close(_pipe_fd()), id="close-pipe"),
            pytest.param(lambda: os.closerange(0, 4096), id="close-everything"),
        ],
    )
    def test_outcome_survives(self, vandalism):
        """Whatever a task does to its descriptors, the parent still gets its result."""

        def task() -> str:
            vandalism()
            return "outcome"

        with ForkPerTaskExecutor(1) as ex:
            assert ex.submit(task).result(timeout=10) == "outcome"

    def test_setsid_is_refused_and_reported(self):
        """os.setsid() in a task fails (it leads a group) and the error comes back."""
        with ForkPerTaskExecutor(1) as ex, pytest.raises(PermissionError):
            ex.submit(os.setsid).result(timeout=10)

    def test_children_left_running_are_stopped(self):
        """A task that starts children and returns leaves nothing running behind."""

        def start_and_leave() -> list[int]:
            return [subprocess.Popen(["sleep", "60"]).pid for _ in range(3)]

        with ForkPerTaskExecutor(1) as ex:
            pids = ex.submit(start_and_leave).result(timeout=10)
        for pid in pids:
            wait_gone(pid, timeout=5)


class TestResourceExhaustion:
    def test_fork_failure_is_an_oserror_and_passes(self):
        """When fork() fails (pids cgroup full), the future says so; later tasks run."""
        cgroups = Path("/sys/fs/cgroup/pids")
        if not (cgroups / "cgroup.procs").exists() or not os.access(cgroups, os.W_OK):
            pytest.skip("needs a writable cgroup v1 pids controller (root)")
        group = cgroups / f"forkpool-test-{uuid.uuid4().hex[:8]}"
        group.mkdir()
        script = start_script(
            stdin=True,
            source="""
            import sys, forkpool
            ex = forkpool.ForkPerTaskExecutor(1)
            print(ex.submit(pow, 2, 3).result(timeout=10), flush=True)
            sys.stdin.readline()
            try:
                ex.submit(pow, 2, 4).result(timeout=10)
            except OSError as exc:
                print("error", exc, flush=True)
            sys.stdin.readline()
            print("after", ex.submit(pow, 2, 5).result(timeout=10), flush=True)
            ex.shutdown()
            """,
        )
        try:
            assert script.stdout.readline().strip() == "8"
            (group / "cgroup.procs").write_text(str(script.pid))
            threads = int(
                next(
                    line.split()[1]
                    for line in Path(f"/proc/{script.pid}/status").read_text().splitlines()
                    if line.startswith("Threads:")
                )
            )
            (group / "pids.max").write_text(str(threads))
            script.stdin.write("go\n")
            script.stdin.flush()
            line = script.stdout.readline().strip()
            assert line.startswith("error [Errno 11] fork failed: Resource temporarily unavailable")
            (group / "pids.max").write_text("max")
            script.stdin.write("go\n")
            script.stdin.flush()
            assert script.stdout.readline().strip() == "after 32"
            assert script.wait(timeout=10) == 0
        finally:
            script.kill()
            script.wait()
            for stream in (script.stdin, script.stdout, script.stderr):
                stream.close()
            group.rmdir()

    def test_descriptor_exhaustion_is_clear_and_leaks_nothing(self):
        """Out of fds: a clear error, no descriptor leaked, and tasks run again after."""
        script = """
            import os, resource, forkpool
            ex = forkpool.ForkPerTaskExecutor(1)
            ex.submit(pow, 1, 1).result(timeout=10)
            before = sorted(os.listdir("/proc/self/fd"))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            for headroom in (0, 1, 2):
                resource.setrlimit(resource.RLIMIT_NOFILE, (len(before) + headroom, hard))
                try:
                    print(headroom, "ok", ex.submit(pow, 2, headroom).result(timeout=10))
                except OSError as exc:
                    print(headroom, "error", exc)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                assert sorted(os.listdir("/proc/self/fd")) == before, "leaked descriptors"
            print("after", ex.submit(pow, 2, 10).result(timeout=10))
            ex.shutdown()
            leaked = set(os.listdir("/proc/self/fd")) - set(before)
            assert not leaked, f"leaked descriptors {leaked}"
        """
        process = start_script(script)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        lines = out.splitlines()
        # listdir held one descriptor while it listed, so "len(before)" leaves one free.
        assert lines[0].startswith("0 error [Errno 24] cannot create the result pipe: Too many")
        assert lines[1] == "1 ok 2"  # the pipe fits, a pidfd does not: exits are polled
        assert lines[2] == "2 ok 4"
        assert lines[3] == "after 1024"


class TestRaces:
    def test_cancel_racing_completion(self):
        """Cancels racing with completion: every future ends once, none stays pending."""
        rng = random.Random(7)  # noqa: S311 - a seeded schedule, not a secret
        calls: dict[int, int] = {}
        with ForkPerTaskExecutor(2) as ex:
            futures = [ex.submit(time.sleep, rng.choice([0, 0.001, 0.01])) for _ in range(150)]
            for future in futures:
                future.add_done_callback(
                    lambda f: calls.__setitem__(id(f), calls.get(id(f), 0) + 1)
                )

            def canceller() -> None:
                for future in rng.sample(futures, 100):
                    future.cancel()
                    time.sleep(rng.choice([0, 0.0005]))

            thread = threading.Thread(target=canceller)
            thread.start()
            thread.join(timeout=30)
        done, not_done = wait(futures, timeout=30)
        assert not not_done
        assert all(calls[id(f)] == 1 for f in futures)
        for future in done:
            if not future.cancelled():
                assert future.result() is None

    def test_shutdown_racing_submit(self):
        """Submits racing a shutdown either raise RuntimeError or resolve; none hang."""
        ex = ForkPerTaskExecutor(2)
        accepted: list[object] = []
        refused = threading.Event()

        def submitter() -> None:
            try:
                while True:
                    accepted.append(ex.submit(pow, 2, 2))
            except RuntimeError:
                refused.set()

        threads = [threading.Thread(target=submitter) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(accepted) >= 30, 10, "some submits")
        ex.shutdown(wait=True, cancel_futures=True)
        for thread in threads:
            thread.join(timeout=10)
        assert refused.is_set()
        done, not_done = wait(accepted, timeout=30)
        assert not not_done
        assert all(f.cancelled() or f.result() == 4 for f in done)

    def test_kill_workers_during_dispatch(self):
        """kill_workers() mid-dispatch: every future ends exactly once."""
        calls: dict[int, int] = {}
        ex = ForkPerTaskExecutor(2)
        futures = [ex.submit(time.sleep, 0.02) for _ in range(60)]
        for future in futures:
            future.add_done_callback(lambda f: calls.__setitem__(id(f), calls.get(id(f), 0) + 1))
        wait_for(lambda: sum(f.done() for f in futures) >= 5, 10, "some to finish")
        ex.kill_workers()
        ex.shutdown(wait=True)
        assert not wait(futures, timeout=30).not_done
        assert all(calls[id(f)] == 1 for f in futures)
        for future in futures:
            if future.cancelled():
                continue
            error = future.exception()
            assert error is None or (isinstance(error, ChildDiedError) and error.signal == 9)
        with pytest.raises(CancelledError):
            next(f for f in futures if f.cancelled()).result()


@pytest.mark.redis
class TestRedisErrors:
    @pytest.mark.parametrize(
        ("break_it", "mend_it"),
        [
            pytest.param(
                [
                    ("CONFIG", "SET", "maxmemory-policy", "noeviction"),
                    ("CONFIG", "SET", "maxmemory", "1"),
                ],
                [("CONFIG", "SET", "maxmemory", "0")],
                id="out-of-memory",
            ),
            pytest.param(
                [("REPLICAOF", "127.0.0.1", "1")],
                [("REPLICAOF", "NO", "ONE")],
                id="read-only-replica",
            ),
        ],
    )
    def test_tasks_unaffected_and_bookkeeping_catches_up(
        self, own_server, break_it, mend_it, caplog
    ):
        """Redis refusing writes never touches tasks; once it accepts, entries appear."""
        caplog.set_level("WARNING", logger="forkpool")
        client = redis.Redis.from_url(own_server.url)
        keys = Keys("fptest-errors", "h")
        for command in break_it:
            client.execute_command(*command)
        with ForkPerTaskExecutor(
            2,
            redis=own_server.url,
            key_prefix="fptest-errors",
            host="h",
            reap_interval=0.2,
            ttl=1.0,
        ) as ex:
            assert [f.result(timeout=10) for f in [ex.submit(pow, n, 2) for n in range(20)]] == [
                n * n for n in range(20)
            ]
            runner = ex.submit(time.sleep, 3)
            wait_for(lambda: "answers with errors" in caplog.text, 10, "the refusal to be noticed")
            assert client.hlen(keys.meta) == 0
            for command in mend_it:
                client.execute_command(*command)
            wait_for(lambda: client.hlen(keys.meta) == 1, 10, "the running task's entry")
            runner.result(timeout=10)
        assert client.hlen(keys.meta) == 0
        assert "works again" in caplog.text
        client.close()


@pytest.mark.fork_only  # about this process's own SIGCHLD; a mold reaps its own
@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
def test_children_reaped_behind_our_back(pidfd, monkeypatch):
    """With SIGCHLD ignored (auto-reaping), results still arrive and nothing crashes."""
    monkeypatch.setattr(forkpool._linux, "HAS_PIDFD", pidfd)
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with ForkPerTaskExecutor(2) as ex:
            assert [f.result(timeout=10) for f in [ex.submit(pow, 2, n) for n in range(20)]] == [
                2**n for n in range(20)
            ]
            with pytest.raises(ChildDiedError, match="reaped it"):
                ex.submit(os._exit, 3).result(timeout=10)
            assert ex.submit(pow, 3, 3).result(timeout=10) == 27
    finally:
        signal.signal(signal.SIGCHLD, previous)
