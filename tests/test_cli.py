"""The forkpool command, run for real in a subprocess against a real server."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    OwnServer,
    children,
    free_port,
    orphan_script,
    read_pids,
    start_script,
    wait_for,
    wait_gone,
)

import forkpool
from forkpool import ForkPerTaskExecutor
from forkpool._entry import Keys
from forkpool._report import plural

pytestmark = pytest.mark.redis

HOST = "cli-host"


def forkpool_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    """Run ``python -m forkpool ARGS``; return the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "forkpool", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _hold_memory(size: int, ready: str) -> None:
    block = bytearray(b"\x01") * size
    Path(ready).write_text(str(len(block)))
    time.sleep(30)


@pytest.fixture(name="busy")
def fixture_busy(redis_url, client, prefix):
    """An executor with two tracked children running for the test's duration."""
    with ForkPerTaskExecutor(
        2, redis=redis_url, key_prefix=prefix, host=HOST, reap_interval=0.2, ttl=1.0
    ) as ex:
        futures = [ex.submit(_sleep, 30) for _ in range(2)]
        wait_for(lambda: client.hlen(Keys(prefix, HOST).meta) == 2, 5, "both entries")
        yield futures
        ex.kill_workers()


class TestPs:
    def test_table(self, redis_url, prefix, busy):
        """ps prints an aligned table of this host's children."""
        result = forkpool_cli("ps", "--redis", redis_url, "--prefix", prefix, "--host", HOST)
        assert result.returncode == 0, result.stderr
        header, *rows = result.stdout.splitlines()
        assert header.split() == [
            "HOST",
            "TASK",
            "PID",
            "NAME",
            "AGE",
            "DEADLINE",
            "IN",
            "LEASE",
            "LEFT",
            "OWN",
            "PEAK",
            "PARENT",
        ]
        assert len(rows) == 2
        assert {int(row.split()[2]) for row in rows} == {f.pid for f in busy}
        assert all(row.split()[-1] == "?" for row in rows)  # another host name: unknown

    def test_json(self, redis_url, prefix, busy):
        """ps --json lists the metadata fields plus lease_expires."""
        result = forkpool_cli(
            "ps", "--json", "--redis", redis_url, "--prefix", prefix, "--host", HOST
        )
        assert result.returncode == 0, result.stderr
        children = json.loads(result.stdout)
        assert {child["pid"] for child in children} == {f.pid for f in busy}
        for child in children:
            assert {"pid", "task_id", "host", "name", "started", "deadline"} <= child.keys()
            assert child["lease_expires"] > time.time()
            assert child["name"].endswith("_sleep")

    def test_parent_liveness_on_this_host(self, redis_url, prefix, client):
        """On the local host, ps says whether each child's parent is alive."""
        with ForkPerTaskExecutor(
            1, redis=redis_url, key_prefix=prefix, reap_interval=0.2, ttl=1.0
        ) as ex:
            future = ex.submit(_sleep, 30)
            wait_for(lambda: client.exists(f"{prefix}:hosts"), 5, "the host")
            wait_for(
                lambda: (
                    "alive" in forkpool_cli("ps", "--redis", redis_url, "--prefix", prefix).stdout
                ),
                10,
                "the child",
            )
            future.cancel()

    def test_own_peak_of_children_on_this_host(self, redis_url, prefix, tmp_path):
        """On the local host, ps gives each child's own memory at its peak so far."""
        ready = tmp_path / "ready"
        with ForkPerTaskExecutor(1, redis=redis_url, key_prefix=prefix) as ex:
            future = ex.submit(_hold_memory, 40 << 20, str(ready))
            wait_for(ready.exists, 10, "the child's allocation")
            listed: list[dict[str, object]] = []

            def child_listed() -> bool:
                result = forkpool_cli("ps", "--json", "--redis", redis_url, "--prefix", prefix)
                listed[:] = json.loads(result.stdout) if result.returncode == 0 else []
                return bool(listed)

            wait_for(child_listed, 10, "ps to list the child")  # entries are written late
            table = forkpool_cli("ps", "--redis", redis_url, "--prefix", prefix)
            future.cancel()
        (child,) = listed
        # Its peak RSS less what it still shares: the pages it copied on write
        # count too (a few MiB in a process as large as pytest's; 6.3 seen on CI).
        assert 40 << 20 <= child["own_peak_bytes"] <= 56 << 20
        assert " MiB " in table.stdout.splitlines()[1]

    @pytest.mark.usefixtures("busy")
    def test_all_hosts_and_env(self, redis_url, prefix):
        """ps --all-hosts covers every host; FORKPOOL_REDIS_URL supplies the URL."""
        result = forkpool_cli(
            "ps", "--all-hosts", "--json", "--prefix", prefix, env={"FORKPOOL_REDIS_URL": redis_url}
        )
        assert result.returncode == 0, result.stderr
        assert {child["host"] for child in json.loads(result.stdout)} == {HOST}

    @pytest.mark.usefixtures("busy")
    def test_malformed_entries_are_reported_and_skipped(self, redis_url, prefix, client):
        """A malformed entry is named on stderr; the good ones are still listed."""
        # On a host of its own whose lease has not lapsed, so no reaper removes it first.
        keys = Keys(prefix, "quiet-host")
        client.zadd(keys.hosts, {"quiet-host": time.time() + 60})
        client.hset(keys.meta, "broken", "{oops")
        client.zadd(keys.active, {"broken": time.time() + 60})
        result = forkpool_cli(
            "ps", "--all-hosts", "--json", "--redis", redis_url, "--prefix", prefix
        )
        assert result.returncode == 0
        assert len(json.loads(result.stdout)) == 2
        assert "skipping malformed entry broken on quiet-host: not JSON" in result.stderr

    @pytest.mark.usefixtures("busy")
    def test_unknown_host(self, redis_url, prefix):
        """ps for a host nobody registered lists nothing, and hints at the known hosts."""
        result = forkpool_cli("ps", "--redis", redis_url, "--prefix", prefix, "--host", "nope")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "no tracked children on nope"
        assert result.stderr.strip() == (
            f"forkpool: host 'nope' has not been seen under prefix '{prefix}'; known hosts: {HOST}"
        )

    def test_names_with_control_characters_print_escaped_one_line_each(
        self, redis_url, prefix, client, busy
    ):
        """Names from Redis, which any host may write, reach the terminal escaped."""
        # Copies of the busy entries on a host of their own, which no executor rewrites
        # and whose lease has not lapsed, so no reaper removes them first.
        source, quiet = Keys(prefix, HOST), Keys(prefix, "quiet-host")
        client.zadd(quiet.hosts, {"quiet-host": time.time() + 60})
        for task_id, raw in client.hgetall(source.meta).items():
            entry = json.loads(raw)
            entry["host"] = "quiet-host"
            entry["name"] = "evil\nsecond line\x1b[2J\x07\u202eoverride"
            client.hset(quiet.meta, task_id, json.dumps(entry))
            client.zadd(quiet.active, {task_id: time.time() + 60})
        result = forkpool_cli(
            "ps", "--redis", redis_url, "--prefix", prefix, "--host", "quiet-host"
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert len(lines) == 1 + len(busy)  # the header and one line per child
        for line in lines[1:]:
            assert "evil\\nsecond line\\x1b[2J\\x07\\u202eoverride" in line
        assert not any(char in result.stdout for char in "\x1b\x07\u202e")

    def test_nothing_tracked_yet(self, own_server):
        """On a Redis no executor has used, ps prints an empty table and --json prints []."""
        text = forkpool_cli("ps", "--redis", own_server.url, "--host", HOST)
        assert text.returncode == 0, text.stderr
        assert text.stdout.strip() == f"no tracked children on {HOST}"
        assert text.stderr == ""
        as_json = forkpool_cli("ps", "--json", "--redis", own_server.url, "--host", HOST)
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout) == []
        every_host = forkpool_cli("ps", "--json", "--all-hosts", "--redis", own_server.url)
        assert every_host.returncode == 0, every_host.stderr
        assert json.loads(every_host.stdout) == []


class TestErrors:
    def test_no_redis_configured(self):
        """Without --redis or FORKPOOL_REDIS_URL, the error says how to give one."""
        env = {key: value for key, value in os.environ.items() if key != "FORKPOOL_REDIS_URL"}
        result = subprocess.run(
            [sys.executable, "-m", "forkpool", "ps"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "forkpool: error: no Redis configured: pass --redis URL or set FORKPOOL_REDIS_URL"
        )

    def test_bad_url(self):
        """A URL with a bad scheme is one line, no traceback."""
        result = forkpool_cli("ps", "--redis", "http://user:pw@localhost")
        assert result.returncode == 2
        assert "unsupported Redis URL 'http://user:***@localhost'" in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    def test_unreachable(self):
        """An unreachable Redis is one line naming it, no traceback."""
        url = f"redis://127.0.0.1:{free_port()}/0"
        result = forkpool_cli("ps", "--redis", url)
        assert result.returncode == 2
        assert result.stderr.startswith(f"forkpool: error: cannot reach Redis at {url}")
        assert len(result.stderr.strip().splitlines()) == 1

    @pytest.mark.parametrize("password", ["wrong", None], ids=["wrong-password", "no-password"])
    def test_credentials_refused(self, password):
        """Auth failures say the credentials are the problem, not reachability."""
        server = OwnServer(extra_args=("--requirepass", "right"))
        server.start()
        try:
            url = server.url.replace(
                "redis://", f"redis://:{password}@" if password else "redis://"
            )
            result = forkpool_cli("ps", "--redis", url)
        finally:
            server.stop()
        assert result.returncode == 2
        assert "cannot reach" not in result.stderr
        assert "HELLO" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        if password:
            assert "refused the credentials in the URL" in result.stderr
            assert "wrong" not in result.stderr
        else:
            assert "requires a password and none was given" in result.stderr

    def test_usage_error(self):
        """A missing command is argparse's usage error."""
        result = forkpool_cli()
        assert result.returncode == 2
        assert "usage: forkpool" in result.stderr


class TestReapAndKillAll:
    def test_reap_stops_an_orphan(self, redis_url, prefix, client, tmp_path):
        """reap stops the survivors of a SIGKILLed parent and says so."""
        pid_file = tmp_path / "pids"
        parent = start_script(orphan_script(redis_url, prefix, HOST, pid_file, keep_child=True))
        try:
            pids = read_pids(pid_file)
            wait_for(lambda: client.hlen(Keys(prefix, HOST).meta) == 1, 5, "the entry")
            parent.kill()
            parent.wait(timeout=10)
            result = forkpool_cli(
                "reap", "--grace", "1", "--redis", redis_url, "--prefix", prefix, "--host", HOST
            )
            assert result.returncode == 0, result.stderr
            assert f"(pid {pids['child']}, __main__.task): parent gone" in result.stdout
            assert "stopped 1 orphaned descendant" in result.stdout
            wait_gone(pids["child"])
            wait_gone(pids["grandchild"])
        finally:
            parent.kill()
            parent.wait(timeout=10)
            parent.stdout.close()
            parent.stderr.close()

    def test_reap_forgets_hosts_whose_lease_lapsed(self, redis_url, prefix, client):
        """reap forgets hosts whose announced lease has lapsed, as metadata only."""
        gone, alive = Keys(prefix, "gone-host"), Keys(prefix, "alive-host")
        # Scores are when each host's announced lease lapses.
        client.zadd(gone.hosts, {"gone-host": time.time() - 1, "alive-host": time.time() + 60})
        for keys in (gone, alive):
            client.hset(keys.meta, "t", "{}")
            client.zadd(keys.active, {"t": 1.0})
        result = forkpool_cli("reap", "--redis", redis_url, "--prefix", prefix, "--host", HOST)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "forgot departed host gone-host"
        assert not client.exists(gone.meta, gone.active)
        assert client.exists(alive.meta, alive.active) == 2

    def test_verbose_logs_more(self, redis_url, prefix):
        """-v turns on DEBUG logging on stderr."""
        quiet = forkpool_cli("reap", "--redis", redis_url, "--prefix", prefix, "--host", HOST)
        loud = forkpool_cli("-v", "reap", "--redis", redis_url, "--prefix", prefix, "--host", HOST)
        assert quiet.returncode == loud.returncode == 0
        assert len(loud.stderr.splitlines()) > len(quiet.stderr.splitlines())

    def test_reap_removes_garbage_and_reports(self, redis_url, prefix, client):
        """reap runs one cycle with the executor's rules and says what it removed."""
        keys = Keys(prefix, HOST)
        client.hset(keys.meta, "junk", "[]")
        client.zadd(keys.active, {"junk": 1.0, "orphan-lease": 1.0})
        result = forkpool_cli("reap", "--redis", redis_url, "--prefix", prefix, "--host", HOST)
        assert result.returncode == 0, result.stderr
        assert sorted(result.stdout.splitlines()) == [
            "removed entry junk",
            "removed entry orphan-lease",
        ]
        assert not client.exists(keys.meta, keys.active)
        again = forkpool_cli("reap", "--redis", redis_url, "--prefix", prefix, "--host", HOST)
        assert again.stdout.strip() == "nothing to reap"

    def test_kill_all_asks_first(self, redis_url, prefix, busy):
        """kill-all without --yes lists what it would stop and exits 1, stopping nothing."""
        result = forkpool_cli("kill-all", "--redis", redis_url, "--prefix", prefix, "--host", HOST)
        assert result.returncode == 1
        assert result.stdout.count("would stop task") == 2
        assert all(f.running() for f in busy)

    def test_kill_all_yes(self, redis_url, prefix, busy):
        """kill-all --yes stops the children; their futures fail naming SIGKILL."""
        result = forkpool_cli(
            "kill-all", "--yes", "--redis", redis_url, "--prefix", prefix, "--host", HOST
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"stopped 2 tracked children on {HOST}"
        for future in busy:
            error = future.exception(timeout=10)
            assert "SIGKILL" in str(error)
            assert "stopped by `forkpool kill-all` in process" in str(error)
            assert "OOM" not in str(error)


def test_demo_runs_with_an_embedded_server():
    """forkpool demo runs start to end without any Redis configured."""
    env = {key: value for key, value in os.environ.items() if key != "FORKPOOL_REDIS_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "forkpool", "demo", "--tasks", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("forkpool demo: 3 tasks, each building")
    assert "children tracked in Redis right now (forkpool ps --redis redis://" in result.stdout
    assert "--prefix forkpool --host " in result.stdout
    assert "forkpool._demo.heavy_task" in result.stdout
    assert "throughput (tasks/s)" in result.stdout
    assert "tree RSS after (MiB)" in result.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_demo_stopped_by_a_signal_stops_its_server(signum):
    """forkpool demo ended by SIGTERM or SIGHUP stops its embedded Valkey server too."""
    env = {key: value for key, value in os.environ.items() if key != "FORKPOOL_REDIS_URL"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "forkpool", "demo", "--tasks", "200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _valkey_children(demo.pid), 20, "the embedded server")
        (server,) = _valkey_children(demo.pid)
        demo.send_signal(signum)
        assert demo.wait(timeout=30) == 128 + signum
        wait_gone(server, timeout=10)
        assert f"stopped by {signal.Signals(signum).name}" in demo.stderr.read()
    finally:
        demo.kill()
        demo.wait()
        demo.stderr.close()


def _valkey_children(pid: int) -> list[int]:
    return [
        child
        for child in children(pid)
        if "valkey" in Path(f"/proc/{child}/comm").read_text(errors="replace")
    ]


def test_version():
    """forkpool --version and forkpool.__version__ are the installed distribution's version."""
    installed = importlib.metadata.version("forkpool")
    assert forkpool.__version__ == installed
    result = forkpool_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"forkpool {installed}"


@pytest.mark.parametrize(
    ("command", "described", "default"),
    [
        ("ps", "Nothing tracked prints an empty table", "(default: forkpool)"),
        ("reap", "forget hosts whose announced lease has lapsed", "(default: 5)"),
        ("kill-all", "Without --yes it lists what it would stop", "(default: forkpool)"),
        ("demo", "starts an embedded Valkey server", "(default: 8)"),
    ],
)
def test_each_command_explains_itself(command, described, default):
    """Each command's --help says what it does and what its options default to."""
    result = forkpool_cli(command, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert described in text
    assert default in text


def test_counts_read_as_english():
    """Counts in messages are singular for one and plural otherwise."""
    assert plural(1, "task") == "1 task"
    assert plural(3, "task") == "3 tasks"
    assert plural(1, "tracked child", "tracked children") == "1 tracked child"
    assert plural(0, "tracked child", "tracked children") == "0 tracked children"


def test_console_script_is_installed():
    """The forkpool console script exists and prints help."""
    script = os.path.join(os.path.dirname(sys.executable), "forkpool")  # noqa: PTH118, PTH120
    result = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    for command in ("ps", "reap", "kill-all", "demo"):
        assert command in result.stdout
