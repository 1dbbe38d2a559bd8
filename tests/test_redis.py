"""Redis bookkeeping and the reaper, against real Redis/Valkey servers."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING
from unittest import mock

import pytest
import redis
from helpers import (
    OwnServer,
    is_running,
    orphan_script,
    read_pids,
    run_script,
    start_script,
    wait_for,
    wait_gone,
)

import forkpool
from forkpool import ChildDiedError, ForkPerTaskExecutor, kill_all
from forkpool._entry import Keys, TaskEntry
from forkpool._procfs import LocalFacts, read_stat
from forkpool._reaper import Reaper, Stopper

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.redis

HOST = "test-host"
FAST = {"reap_interval": 0.2, "ttl": 1.0}


def _entries(client: redis.Redis, prefix: str, host: str = HOST) -> dict[str, dict]:
    keys = Keys(prefix, host)
    return {task_id.decode(): json.loads(raw) for task_id, raw in client.hgetall(keys.meta).items()}


def _leases(client: redis.Redis, prefix: str, host: str = HOST) -> dict[str, float]:
    members = client.zrange(Keys(prefix, host).active, 0, -1, withscores=True)
    return {member.decode(): score for member, score in members}


def _sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def _sleep_until_exists(path: Path, limit: float) -> str:
    """Run until the test creates ``path`` (at most ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "slept"


def _write_pid_then_sleep(path: Path, seconds: float) -> None:
    path.write_text(str(os.getpid()))
    time.sleep(seconds)


class TestEntries:
    def test_entry_visible_while_running_and_gone_after(self, redis_url, client, prefix):
        """A running child has a complete entry and a lease; both vanish at shutdown."""
        with ForkPerTaskExecutor(2, redis=redis_url, key_prefix=prefix, host=HOST, **FAST) as ex:
            future = ex.submit(_sleep, 1.0)
            wait_for(lambda: _entries(client, prefix), 5, "the entry")
            ((task_id, entry),) = _entries(client, prefix).items()
            stat = read_stat(future.pid)
            facts = LocalFacts.current()
            assert entry == {
                "task_id": task_id,
                "host": HOST,
                "pid": future.pid,
                "pid_start": stat.start_ticks,
                "boot_id": facts.boot_id,
                "pidns": facts.pidns,
                "pgid": future.pid,
                "parent_pid": os.getpid(),
                "parent_start": read_stat(os.getpid()).start_ticks,
                "executor_id": entry["executor_id"],
                "name": f"{__name__}._sleep",
                "started": pytest.approx(time.time(), abs=5),
                "deadline": None,
                "ttl": 1.0,
            }
            assert _leases(client, prefix)[task_id] > time.time()
            assert stat.comm == f"fp-{task_id[:12]}"
            # The host's score is when its lease lapses: now + its ttl.
            assert client.zscore(f"{prefix}:hosts", HOST) == pytest.approx(time.time() + 1, abs=5)
            assert future.result(timeout=10) == "slept"
        assert _entries(client, prefix) == {}
        assert _leases(client, prefix) == {}

    def test_programs_the_task_execs_carry_its_id(self, redis_url, prefix):
        """FORKPOOL_TASK_ID is in the environment of programs the task starts."""
        with ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST) as ex:
            output = ex.submit(subprocess.check_output, ["env"], text=True).result(timeout=10)
        (task_id,) = {
            line.split("=", 1)[1]
            for line in output.splitlines()
            if line.startswith("FORKPOOL_TASK_ID=")
        }
        assert len(task_id) == 32

    def test_deadline_and_per_callable_ttl(self, redis_url, client, prefix):
        """The entry records the task's deadline and its callable's own ttl."""
        napper = forkpool.options(ttl=5.0, timeout=30)(_sleep)
        with ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST) as ex:
            future = ex.submit(napper, 0.8)
            wait_for(lambda: _entries(client, prefix), 5, "the entry")
            ((task_id, entry),) = _entries(client, prefix).items()
            assert entry["ttl"] == 5.0
            assert entry["deadline"] == pytest.approx(entry["started"] + 30, abs=1)
            assert _leases(client, prefix)[task_id] > time.time() + 3
            future.result(timeout=10)

    def test_short_tasks_need_no_writes(self, redis_url, client, prefix):
        """Many quick tasks leave nothing behind, and results are unaffected."""
        with ForkPerTaskExecutor(2, redis=redis_url, key_prefix=prefix, host=HOST, **FAST) as ex:
            assert list(ex.map(abs, range(-50, 0))) == list(range(50, 0, -1))
        assert _entries(client, prefix) == {}

    def test_lease_renewal_outlives_ttl(self, redis_url, client, prefix):
        """A task running 3x its ttl keeps a fresh lease and is never reaped."""
        with (
            ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST) as ex,
            ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST),
        ):
            future = ex.submit(_sleep, 3.0)
            wait_for(lambda: _leases(client, prefix), 5, "the lease")
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                (lease,) = _leases(client, prefix).values()
                assert lease > time.time()
                time.sleep(0.1)
            assert future.result(timeout=10) == "slept"

    def test_kill_workers_removes_entries(self, redis_url, client, prefix):
        """kill_workers() stops the children and their entries are gone at shutdown."""
        ex = ForkPerTaskExecutor(2, redis=redis_url, key_prefix=prefix, host=HOST, **FAST)
        futures = [ex.submit(_sleep, 60) for _ in range(2)]
        wait_for(lambda: len(_entries(client, prefix)) == 2, 5, "both entries")
        ex.kill_workers()
        ex.shutdown(wait=True)
        assert all(isinstance(f.exception(timeout=10), ChildDiedError) for f in futures)
        assert _entries(client, prefix) == {}


class _Proxy:
    """A lazy proxy: every attribute it lacks raises, as werkzeug's LocalProxy does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __getattr__(self, name: str) -> object:
        msg = f"working outside of the proxy's context (looked up {name})"
        raise RuntimeError(msg)

    def __call__(self) -> str:
        return _sleep_until_exists(self.path, 10)


class _CallableInstance:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> str:
        return _sleep_until_exists(self.path, 10)


class _Point:
    def __init__(self, x: int) -> None:
        self.x = x


class TestAnyCallable:
    @pytest.mark.fork_only  # hostile names do not pickle by reference
    def test_every_kind_of_callable_runs_and_is_named(self, redis_url, client, prefix, tmp_path):
        """Naming a task for Redis never fails it: proxies, instances, classes, mocks."""
        release = tmp_path / "release"
        waiting = {
            "proxy": (_Proxy(release), ()),
            "instance": (_CallableInstance(release), ()),
            "mock": (mock.Mock(side_effect=lambda: _sleep_until_exists(release, 10)), ()),
            "partial": (functools.partial(_sleep_until_exists, release), (10,)),
        }
        quick = {
            "class": (_Point, (3,)),
            "builtin": (len, ("four",)),
            "bare mock": (mock.Mock(return_value=7), ()),
        }
        with ForkPerTaskExecutor(
            len(waiting), redis=redis_url, key_prefix=prefix, host=HOST, **FAST
        ) as ex:
            futures = {kind: ex.submit(fn, *args) for kind, (fn, args) in waiting.items()}
            wait_for(lambda: len(_entries(client, prefix)) == len(waiting), 5, "the entries")
            names = sorted(entry["name"] for entry in _entries(client, prefix).values())
            release.touch()
            results = {kind: future.result(timeout=10) for kind, future in futures.items()}
            for kind, (fn, args) in quick.items():
                results[kind] = ex.submit(fn, *args).result(timeout=10)
        assert {k: v for k, v in results.items() if k in waiting} == dict.fromkeys(waiting, "slept")
        assert results["class"].x == 3
        assert results["builtin"] == 4
        assert results["bare mock"] == 7
        assert names == sorted(
            [
                f"{__name__}._Proxy",
                f"{__name__}._CallableInstance",
                "unittest.mock.Mock",
                f"{__name__}._sleep_until_exists",
            ]
        )

    @pytest.mark.fork_only  # hostile names do not pickle by reference
    def test_a_qualname_that_raises_on_every_use_fails_nothing(self, redis_url, client, prefix):
        """A __qualname__ str subclass that raises on slicing, len() and more: all tasks run."""

        def named() -> str:
            time.sleep(0.8)
            return "ran"

        named.__qualname__ = _HostileStr("hostile\nname\x1b[31m")
        with ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST) as ex:
            future = ex.submit(named)
            wait_for(lambda: _entries(client, prefix), 5, "the entry")
            (entry,) = _entries(client, prefix).values()
            assert future.result(timeout=10) == "ran"
            assert ex.submit(pow, 2, 5).result(timeout=10) == 32  # the executor goes on
        assert entry["name"] == f"{__name__}.hostile\nname\x1b[31m"


class _HostileStr(str):
    """A str whose every method a name's formatting might use raises."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> object:
        del args, kwargs
        msg = "this name refuses to be used"
        raise RuntimeError(msg)

    __getitem__ = __len__ = __str__ = __format__ = __add__ = __radd__ = __bool__ = _refuse
    __iter__ = __hash__ = __eq__ = __repr__ = _refuse


class TestConfiguration:
    def test_url_from_environment(self, redis_url, client, prefix, monkeypatch):
        """FORKPOOL_REDIS_URL and FORKPOOL_HOST apply when the arguments are None."""
        monkeypatch.setenv("FORKPOOL_REDIS_URL", redis_url)
        monkeypatch.setenv("FORKPOOL_HOST", "from-env")
        with ForkPerTaskExecutor(1, key_prefix=prefix, **FAST) as ex:
            future = ex.submit(_sleep, 0.8)
            wait_for(lambda: _entries(client, prefix, "from-env"), 5, "the entry")
            future.result(timeout=10)

    def test_blank_host_env_falls_back_to_hostname(self, redis_url, client, prefix, monkeypatch):
        """A blank FORKPOOL_HOST is ignored in favour of the host name."""
        monkeypatch.setenv("FORKPOOL_HOST", "  ")
        with ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, **FAST) as ex:
            future = ex.submit(_sleep, 0.8)
            wait_for(lambda: _entries(client, prefix, socket.gethostname()), 5, "the entry")
            future.result(timeout=10)

    def test_without_redis_redis_py_is_never_imported(self):
        """With no Redis asked for, forkpool never imports redis-py (28 MiB every fork copies)."""
        env = {k: v for k, v in os.environ.items() if k != "FORKPOOL_REDIS_URL"}
        result = run_script(
            """
            import sys
            import forkpool
            with forkpool.ForkPerTaskExecutor(2) as ex:
                assert ex.submit(int, "7").result(timeout=10) == 7
            per_process = forkpool.PerProcessExecutor(1)
            assert per_process.submit(int, "8").result(timeout=10) == 8
            per_process.shutdown()
            print(sorted(name for name in sys.modules if name.split(".")[0] == "redis"))
            assert "kill_all" in dir(forkpool)
            assert callable(forkpool.kill_all)  # Redis's own entry point imports it
            print("redis" in sys.modules)
            try:
                forkpool.no_such_name
            except AttributeError as exc:
                print(exc)
            """,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "[]",
            "True",
            "module 'forkpool' has no attribute 'no_such_name'",
        ]

    def test_client_object_is_used_as_given(self, client, prefix):
        """A ready redis.Redis works, and is not closed by the executor."""
        with ForkPerTaskExecutor(1, redis=client, key_prefix=prefix, host=HOST, **FAST) as ex:
            future = ex.submit(_sleep, 0.8)
            wait_for(lambda: _entries(client, prefix), 5, "the entry")
            future.result(timeout=10)
        assert client.ping()

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            (
                {"ttl": 10, "reap_interval": 5},
                r"ttl \(10s\) must be greater than twice reap_interval \(2 x 5s = 10s\)",
            ),
            ({"ttl": 0}, "ttl must be a finite number of seconds > 0"),
            ({"reap_interval": -1}, "reap_interval must be a finite number of seconds > 0"),
            ({"host": "a{b}"}, "host must not contain braces"),
            ({"host": " "}, "host must be a non-blank string"),
            ({"key_prefix": ""}, "key_prefix must be a non-empty string"),
            ({"redis": "http://localhost"}, "unsupported Redis URL 'http://localhost'"),
        ],
    )
    def test_invalid_settings(self, kwargs, message):
        """Bad Redis settings are ValueErrors at construction, naming the problem."""
        with pytest.raises(ValueError, match=message):
            ForkPerTaskExecutor(**kwargs)

    def test_redis_of_wrong_type(self):
        """redis= of another type is a TypeError."""
        with pytest.raises(
            TypeError, match=r"redis must be None, False, a URL, a redis\.Redis or a redis\.cluster"
        ):
            ForkPerTaskExecutor(redis=42)  # type: ignore[arg-type]

    def test_password_is_redacted(self):
        """A URL's password never appears in an error message."""
        with pytest.raises(ValueError, match=r"user:\*\*\*@") as info:
            ForkPerTaskExecutor(redis="http://user:secret@localhost")
        assert "secret" not in str(info.value)

    def test_callable_ttl_must_exceed_two_intervals(self, redis_url, prefix):
        """A per-callable ttl too short for the reap interval fails at submit."""
        with (
            ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, **FAST) as ex,
            pytest.raises(ValueError, match="ttl"),
        ):
            ex.submit(forkpool.options(ttl=0.3)(_sleep), 0)


class TestOutages:
    def test_unreachable_at_start(self, caplog):
        """With Redis down from the start, tasks run and one warning says so."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        caplog.set_level(logging.WARNING, logger="forkpool")
        url = f"redis://127.0.0.1:{port}/0"
        with ForkPerTaskExecutor(2, redis=url, key_prefix="fptest-down", **FAST) as ex:
            assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
            assert ex.submit(_sleep, 1.0).result(timeout=10) == "slept"
        warnings = [r for r in caplog.records if "cannot reach Redis at" in r.getMessage()]
        assert len(warnings) == 1
        assert f"127.0.0.1:{port}" in warnings[0].getMessage()

    def test_credentials_refused(self, caplog):
        """Credentials refused: tasks run, and the one warning says so, not "cannot reach"."""
        server = OwnServer(extra_args=("--requirepass", "right"))
        server.start()
        caplog.set_level(logging.WARNING, logger="forkpool")
        url = server.url.replace("redis://", "redis://:wrong@")
        try:
            with ForkPerTaskExecutor(2, redis=url, key_prefix="fptest-auth", **FAST) as ex:
                assert ex.submit(_sleep, 0.5).result(timeout=10) == "slept"
        finally:
            server.stop()
        messages = [r.getMessage() for r in caplog.records]
        assert [m for m in messages if "refused the credentials in the URL" in m], messages
        assert not [m for m in messages if "cannot reach" in m or "wrong" in m]

    def test_killed_mid_run_then_restarted(self, own_server, caplog, tmp_path):
        """Redis dies mid-run: every result is right; after a restart the runner re-registers."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        client = redis.Redis.from_url(own_server.url)
        prefix = "fptest-outage"
        release = tmp_path / "release"
        with ForkPerTaskExecutor(
            3, redis=own_server.url, key_prefix=prefix, host=HOST, **FAST
        ) as ex:
            # Runs until released: the test must see it re-registered, however slow
            # the machine is today.
            long_one = ex.submit(_sleep_until_exists, release, 60.0)
            try:
                wait_for(lambda: _entries(client, prefix), 5, "the long task's entry")
                own_server.kill()
                futures = [ex.submit(pow, n, 2) for n in range(40)]
                assert [f.result(timeout=30) for f in futures] == [n * n for n in range(40)]
                # Queued bookkeeping is bounded by the children alive at once (3 slots, plus
                # the entry written before the outage), never by the 40 tasks that ran.
                unwritten, removals = ex._runtime.bookkeeper.pending
                assert unwritten <= 3
                assert removals <= 4
                wait_for(
                    lambda: any("cannot reach Redis at" in r.getMessage() for r in caplog.records),
                    10,
                    "the outage to be noticed",
                )
                own_server.start()
                client = redis.Redis.from_url(own_server.url)
                # Entries of tasks that ended around the restart may show up for an
                # instant; their removals follow in the next batch.
                wait_for(
                    lambda: [e["pid"] for e in _entries(client, prefix).values()] == [long_one.pid],
                    10,
                    "the running task alone re-registered",
                )
            finally:
                release.touch()  # a failure above must not wait out the task
            assert long_one.result(timeout=10) == "slept"
        assert _entries(client, prefix) == {}
        messages = [r.getMessage() for r in caplog.records]
        assert sum("cannot reach Redis at" in m for m in messages) == 1
        assert sum("works again" in m for m in messages) == 1
        client.close()

    def test_entries_that_outlived_an_outage_are_deleted_on_recovery(self, tmp_path, caplog):
        """A task written before an outage and finished during it loses its entry on recovery."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        server = OwnServer(persistent=True)  # its entries come back after the restart
        server.start()
        stay, leave = tmp_path / "stay", tmp_path / "leave"
        prefix = "fptest-reconcile"
        try:
            client = redis.Redis.from_url(server.url)
            with ForkPerTaskExecutor(
                2, redis=server.url, key_prefix=prefix, host=HOST, **FAST
            ) as ex:
                staying = ex.submit(_sleep_until_exists, stay, 60.0)
                leaving = ex.submit(_sleep_until_exists, leave, 60.0)
                try:
                    wait_for(lambda: len(_entries(client, prefix)) == 2, 5, "both entries")
                    server.kill()
                    leave.touch()
                    assert leaving.result(timeout=10) == "slept"
                    wait_for(
                        lambda: any(
                            "cannot reach Redis at" in r.getMessage() for r in caplog.records
                        ),
                        10,
                        "the outage to be noticed",
                    )
                    # No removal is kept for the finished task: recovery will look.
                    wait_for(lambda: ex._runtime.bookkeeper.pending[1] == 0, 5, "no removal kept")
                    server.start()
                    client = redis.Redis.from_url(server.url)
                    wait_for(
                        lambda: (
                            [e["pid"] for e in _entries(client, prefix).values()] == [staying.pid]
                        ),
                        10,
                        "the finished task's entry deleted, the running one kept",
                    )
                finally:
                    stay.touch()
                    leave.touch()
                assert staying.result(timeout=10) == "slept"
            assert _entries(client, prefix) == {}
            client.close()
        finally:
            server.stop()

    def test_stalled_redis_delays_no_task(self, own_server):
        """While Redis stalls every write (CLIENT PAUSE), tasks still run and finish."""
        client = redis.Redis.from_url(own_server.url)
        with ForkPerTaskExecutor(
            2, redis=own_server.url, key_prefix="fptest-pause", host=HOST, **FAST
        ) as ex:
            ex.submit(pow, 1, 1).result(timeout=10)
            client.execute_command("CLIENT", "PAUSE", 8000, "WRITE")
            paused_at = time.monotonic()
            results = [f.result(timeout=10) for f in [ex.submit(pow, n, 2) for n in range(20)]]
            finished_within = time.monotonic() - paused_at
            client.execute_command("CLIENT", "UNPAUSE")
        assert results == [n * n for n in range(20)]
        assert finished_within < 8  # all done while Redis was still paused
        client.close()


class TestReaper:
    @pytest.mark.parametrize(
        ("keep_child", "mold"),
        [(False, False), (True, False), (True, True)],
        ids=["child-died", "child-survived", "mold-killed-too"],
    )
    def test_orphans_of_a_killed_parent_are_reaped(
        self, redis_url, client, prefix, tmp_path, *, keep_child, mold
    ):
        """After a parent's SIGKILL (and its mold's), another executor stops its orphans."""
        pid_file = tmp_path / "pids"
        parent = start_script(
            orphan_script(redis_url, prefix, HOST, pid_file, keep_child=keep_child, mold=mold)
        )
        try:
            ready = parent.stdout.readline().split()
            pids = read_pids(pid_file)
            wait_for(lambda: _entries(client, prefix), 5, "the entry")
            if mold:
                os.kill(int(ready[1]), signal.SIGKILL)  # no mold left to stop its children
            parent.kill()
            parent.wait(timeout=10)
            if keep_child:
                assert is_running(pids["child"])
            with ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST):
                wait_gone(pids["grandchild"], timeout=5)
                wait_gone(pids["child"], timeout=5)
                wait_for(lambda: not _entries(client, prefix), 5, "the entry to go")
        finally:
            parent.kill()
            parent.wait(timeout=10)
            parent.stdout.close()
            parent.stderr.close()

    def test_forged_entries_kill_nothing(self, redis_url, client, prefix, caplog):
        """Forged or broken entries never get a stranger signalled; they are removed."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
        try:
            stat = read_stat(stranger.pid)
            facts = LocalFacts.current()
            keys = Keys(prefix, HOST)
            dead_pid = _a_dead_pid()
            forged = {
                # A live non-forkpool process, with its real pid and start time.
                "impostor": _entry("impostor", stranger.pid, stat.start_ticks, facts, dead_pid),
                # A dead "child" whose group is a live stranger's.
                "group": _entry("group", dead_pid, 0, facts, dead_pid, pgid=stranger.pid),
            }
            client.hset(keys.meta, mapping={k: e.to_json() for k, e in forged.items()})
            client.hset(keys.meta, mapping={"garbage": "{not json", "partial": '{"pid": 1}'})
            client.zadd(keys.active, dict.fromkeys([*forged, "garbage", "no-meta"], 1.0))
            client.hset(keys.meta, "no-lease", forged["impostor"].to_json())
            with ForkPerTaskExecutor(
                1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST
            ) as ex:
                wait_for(lambda: not client.exists(keys.meta, keys.active), 5, "the cleanup")
                assert ex.submit(pow, 2, 3).result(timeout=10) == 8
            assert is_running(stranger.pid)
        finally:
            stranger.kill()
            stranger.wait()
        logged = " ".join(r.getMessage() for r in caplog.records)
        for problem in ("not JSON", "missing fields", "a lease without metadata"):
            assert problem in logged

    def test_keys_of_the_wrong_type_are_replaced(self, redis_url, client, prefix, caplog):
        """A host key holding the wrong Redis type is removed; bookkeeping then works."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        keys = Keys(prefix, HOST)
        client.set(keys.meta, "not a hash")
        client.rpush(keys.active, "not a zset")
        with ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST) as ex:
            future = ex.submit(_sleep, 2.0)
            wait_for(lambda: client.type(keys.meta) == b"hash", 5, "the meta hash")
            wait_for(lambda: _entries(client, prefix), 5, "the entry")
            assert future.result(timeout=10) == "slept"
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert "it is a string, not a hash" in logged
        assert "it is a list, not a zset" in logged

    def test_expired_lease_with_live_parent_is_left_alone(self, redis_url, client, prefix, caplog):
        """An expired lease whose parent lives is logged once, never killed or removed."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
        try:
            facts = LocalFacts.current()
            me = read_stat(os.getpid())
            entry = _entry(
                "slow-owner",
                sleeper.pid,
                read_stat(sleeper.pid).start_ticks,
                facts,
                os.getpid(),
                parent_start=me.start_ticks,
            )
            keys = Keys(prefix, HOST)
            client.hset(keys.meta, "slow-owner", entry.to_json())
            client.zadd(keys.active, {"slow-owner": time.time() - 100})
            with ForkPerTaskExecutor(
                1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST
            ) as ex:
                reaper = ex._runtime.bookkeeper.reaper
                wait_for(lambda: reaper.cycles >= 4, 5, "four reaper cycles")
            assert sum("slow-owner" in r.getMessage() for r in caplog.records) == 1
            assert is_running(sleeper.pid)
            assert "slow-owner" in _entries(client, prefix)
        finally:
            sleeper.kill()
            sleeper.wait()

    def test_other_hosts_entries_are_never_signalled(self, redis_url, client, prefix):
        """A live host's entries are untouched; a departed host's are deleted, unsignalled."""
        sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
        try:
            facts = LocalFacts.current()
            start = read_stat(sleeper.pid).start_ticks
            # Each host's score is when its announced lease lapses.
            leases = (("alive-host", time.time() + 900), ("gone-host", time.time() - 3600))
            for host, lease_end in leases:
                keys = Keys(prefix, host)
                entry = _entry("t1", sleeper.pid, start, facts, _a_dead_pid(), host=host)
                client.hset(keys.meta, "t1", entry.to_json())
                client.zadd(keys.active, {"t1": 1.0})
                client.zadd(keys.hosts, {host: lease_end})
            with ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST):
                wait_for(lambda: not _entries(client, prefix, "gone-host"), 5, "the departed host")
            assert _entries(client, prefix, "alive-host")
            assert client.zscore(Keys(prefix, HOST).hosts, "gone-host") is None
            assert is_running(sleeper.pid)
        finally:
            sleeper.kill()
            sleeper.wait()

    def test_a_short_ttl_host_never_forgets_a_live_long_ttl_host(
        self, redis_url, client, prefix, tmp_path
    ):
        """A host is judged departed by its own announced lease, not by the judge's ttl."""
        release = tmp_path / "release"
        with ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, host="patient") as patient:
            future = patient.submit(_sleep_until_exists, release, 30)
            wait_for(lambda: _entries(client, prefix, "patient"), 5, "the patient host's entry")
            announced = time.monotonic()
            with ForkPerTaskExecutor(
                1, redis=redis_url, key_prefix=prefix, host="hasty", reap_interval=0.5, ttl=1.5
            ) as hasty:
                reaper = hasty._runtime.bookkeeper.reaper
                # The patient host renews every 30 s; the hasty one judges every 0.5 s.
                wait_for(
                    lambda: reaper.cycles >= 3 and time.monotonic() > announced + 3,
                    10,
                    "hasty reaper cycles past its own ttl",
                )
                assert _entries(client, prefix, "patient")
                assert client.zscore(Keys(prefix, "patient").hosts, "patient") is not None
            release.touch()
            assert future.result(timeout=10) == "slept"

    def test_an_entry_rewritten_to_name_a_dead_parent_kills_nothing(
        self, redis_url, client, prefix, tmp_path, caplog
    ):
        """A live task whose entry is edited to name a dead parent is never signalled."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        release = tmp_path / "release"
        keys = Keys(prefix, HOST)
        # The owner renews (and so rewrites) its entries only every 30 s.
        with ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix, host=HOST) as owner:
            future = owner.submit(_sleep_until_exists, release, 30)
            wait_for(lambda: _entries(client, prefix), 5, "the entry")
            ((task_id, entry),) = _entries(client, prefix).items()
            entry["parent_pid"] = _a_dead_pid()
            client.hset(keys.meta, task_id, json.dumps(entry))
            with ForkPerTaskExecutor(
                1, redis=redis_url, key_prefix=prefix, host=HOST, **FAST
            ) as judge:
                reaper = judge._runtime.bookkeeper.reaper
                wait_for(lambda: reaper.cycles >= 3, 10, "three reaper cycles")
            assert is_running(future.pid)
            release.touch()
            assert future.result(timeout=10) == "slept"
        assert any(task_id in r.getMessage() and "kernel" in r.getMessage() for r in caplog.records)

    def test_reaper_cost_ignores_a_thousand_live_hosts(self, own_server):
        """With 1,000 live hosts in Redis, a cycle sends a handful of commands, none theirs."""
        client = redis.Redis.from_url(own_server.url)
        prefix = "fptest-crowd"
        now = time.time()
        pipe = client.pipeline(transaction=False)
        for n in range(1000):
            other = Keys(prefix, f"host-{n}")
            pipe.zadd(other.hosts, {other.host: now + 900})  # leases that have not lapsed
            pipe.zadd(other.active, {"task": now + 900})
            pipe.hset(other.meta, "task", "{}")
        pipe.execute()
        reaper = Reaper(
            keys=Keys(prefix, HOST), facts=LocalFacts.current(), stopper=Stopper(grace=1)
        )
        commands = _monitor(client, own_server.url, lambda: reaper.cycle(client))
        assert 1 <= len(commands) <= 8, commands
        assert not [c for c in commands if "host-" in c], commands
        client.close()


class TestKillAll:
    def test_kill_all_stops_this_hosts_children(self, redis_url, client, prefix):
        """kill_all stops every tracked child here, clears entries; futures name SIGKILL."""
        with ForkPerTaskExecutor(2, redis=redis_url, key_prefix=prefix, host=HOST, **FAST) as ex:
            futures = [ex.submit(_sleep, 60) for _ in range(2)]
            wait_for(lambda: len(_entries(client, prefix)) == 2, 5, "both entries")
            assert kill_all(client, host=HOST, key_prefix=prefix) == 2
            for future in futures:
                with pytest.raises(ChildDiedError, match="SIGKILL") as info:
                    future.result(timeout=10)
                assert info.value.stopped_by == f"forkpool.kill_all() in process {os.getpid()}"
                assert "OOM" not in str(info.value)
            assert _entries(client, prefix) == {}
            assert ex.submit(pow, 2, 2).result(timeout=10) == 4

    def test_kill_all_with_a_url_and_nothing_tracked(self, redis_url, prefix):
        """kill_all accepts a URL and returns 0 when nothing is tracked."""
        assert kill_all(redis_url, host=HOST, key_prefix=prefix) == 0


def _a_dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _entry(
    task_id: str,
    pid: int,
    pid_start: int,
    facts: LocalFacts,
    parent_pid: int,
    *,
    pgid: int | None = None,
    parent_start: int = 0,
    host: str = HOST,
) -> TaskEntry:
    return TaskEntry(
        task_id=task_id,
        host=host,
        pid=pid,
        pid_start=pid_start,
        boot_id=facts.boot_id,
        pidns=facts.pidns,
        pgid=pid if pgid is None else pgid,
        parent_pid=parent_pid,
        parent_start=parent_start,
        executor_id="forged",
        name="forged",
        started=time.time(),
        deadline=None,
        ttl=1.0,
    )


def _monitor(client: redis.Redis, url: str, action) -> list[str]:
    """Run ``action`` and return every command the server saw meanwhile (MONITOR)."""
    watcher = redis.Redis.from_url(url)
    seen: list[str] = []
    start, end = f"monitor-start-{time.monotonic_ns()}", f"monitor-end-{time.monotonic_ns()}"
    with watcher.monitor() as monitor:
        reader = threading.Thread(
            target=lambda: seen.extend(event["command"] for event in _until(monitor, end)),
            daemon=True,
        )
        reader.start()
        # MONITOR starts asynchronously: ping until the watcher has seen a ping.
        wait_for(lambda: client.echo(start) and any(start in c for c in seen), 10, "MONITOR")
        action()
        client.echo(end)
        reader.join(timeout=10)
    watcher.close()
    started = max(i for i, command in enumerate(seen) if start in command)
    return seen[started + 1 :]


def _until(monitor, marker: str):
    for event in monitor.listen():
        if marker in event["command"]:
            return
        yield event


def test_signal_escalation_reaches_sigterm_ignorers():
    """The reaper's stopper sends SIGKILL after the grace to a process ignoring SIGTERM."""
    script = (
        "import signal, time; signal.signal(15, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "ready"
        stopper = Stopper(grace=0.3)
        stopper.stop([os.pidfd_open(process.pid)])
        time.sleep(0.1)
        assert process.poll() is None
        wait_for(lambda: (stopper.escalate(), process.poll() is not None)[1], 5, "SIGKILL")
        assert process.returncode == -signal.SIGKILL
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
