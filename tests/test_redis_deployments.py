"""Tracking and reaping on the deployments people run: a Redis Cluster and Sentinel.

Each test starts real servers (tests/deployments.py): a 6-node cluster (3 masters,
3 replicas) and a master with a replica watched by 3 Sentinels.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from deployments import Cluster, SentinelSetup
from helpers import is_running, orphan_script, read_pids, start_script, wait_for, wait_gone
from redis.cluster import ClusterNode, RedisCluster

from forkpool import ChildDiedError, ForkPerTaskExecutor
from forkpool._entry import Keys
from forkpool._procfs import LocalFacts
from forkpool._reaper import Reaper, Stopper

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.hosts, pytest.mark.redis, pytest.mark.slow]

HOST = "deploy-host"
FAST = {"reap_interval": 0.2, "ttl": 1.0}


def _sleep_until_exists(path: Path, limit: float) -> str:
    deadline = time.monotonic() + limit
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "slept"


def _cluster_client(cluster: Cluster) -> RedisCluster:
    """A client of the live nodes, with timeouts: a test must never hang on a dead node."""
    return RedisCluster(
        startup_nodes=[
            ClusterNode("127.0.0.1", node.port) for node in cluster.nodes if node.process
        ],
        socket_timeout=2,
        socket_connect_timeout=2,
    )


def _entries(client: redis.Redis | RedisCluster, prefix: str, host: str = HOST) -> dict:
    keys = Keys(prefix, host)
    return {k.decode(): json.loads(v) for k, v in client.hgetall(keys.meta).items()}


def _leases(client: redis.Redis | RedisCluster, prefix: str, host: str = HOST) -> dict:
    members = client.zrange(Keys(prefix, host).active, 0, -1, withscores=True)
    return {member.decode(): score for member, score in members}


def _all_keys(cluster: Cluster, prefix: str) -> list[bytes]:
    found: list[bytes] = []
    for node in cluster.live_masters():
        with node.client() as client:
            found.extend(client.scan_iter(match=f"{prefix}:*"))
    return found


def _forkpool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forkpool", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def _running(deployment: Cluster | SentinelSetup) -> Iterator[None]:
    try:
        deployment.start()
        yield
    finally:
        deployment.stop()


@pytest.fixture(name="cluster", scope="module")
def fixture_cluster() -> Iterator[Cluster]:
    """A healthy cluster shared by the tests that do not break it."""
    cluster = Cluster()
    with _running(cluster):
        yield cluster


@pytest.fixture(name="own_cluster")
def fixture_own_cluster() -> Iterator[Cluster]:
    """A cluster of this test's own, which it may break."""
    cluster = Cluster()
    with _running(cluster):
        yield cluster


@pytest.fixture(name="sentinel")
def fixture_sentinel() -> Iterator[SentinelSetup]:
    """A master, a replica and three Sentinels of this test's own."""
    setup = SentinelSetup()
    with _running(setup):
        yield setup


@pytest.fixture(name="prefix")
def fixture_prefix(request: pytest.FixtureRequest) -> str:
    return f"fpdeploy-{request.node.name[:20].replace('[', '-').strip(']')}-{os.getpid()}"


class TestCluster:
    @pytest.mark.parametrize("given", ["url", "client"])
    def test_tracking_and_nothing_left_after_shutdown(self, cluster, prefix, tmp_path, given):
        """On a cluster, running children have entries; after shutdown no key is left."""
        client = _cluster_client(cluster)
        target = cluster.url if given == "url" else _cluster_client(cluster)
        release = tmp_path / "release"
        try:
            with ForkPerTaskExecutor(2, redis=target, key_prefix=prefix, host=HOST, **FAST) as ex:
                futures = [ex.submit(_sleep_until_exists, release, 20) for _ in range(2)]
                wait_for(lambda: len(_entries(client, prefix)) == 2, 10, "both entries")
                keys = Keys(prefix, HOST)
                assert client.keyslot(keys.active) == client.keyslot(keys.meta)
                assert len(_leases(client, prefix)) == 2
                assert client.zscore(keys.hosts, HOST) > time.time()
                release.touch()
                assert [f.result(timeout=10) for f in futures] == ["slept", "slept"]
            wait_for(lambda: _all_keys(cluster, prefix) == [f"{prefix}:hosts".encode()], 10, "")
        finally:
            client.close()
            if isinstance(target, RedisCluster):
                target.close()

    def test_ps_reap_and_kill_all_across_hosts(self, cluster, prefix, tmp_path):
        """forkpool ps, reap and kill-all take a cluster URL and see every host."""
        release = tmp_path / "release"
        with (
            ForkPerTaskExecutor(1, redis=cluster.url, key_prefix=prefix, host="a", **FAST) as a,
            ForkPerTaskExecutor(1, redis=cluster.url, key_prefix=prefix, host="b", **FAST) as b,
        ):
            futures = [ex.submit(_sleep_until_exists, release, 30) for ex in (a, b)]
            client = _cluster_client(cluster)
            wait_for(
                lambda: _entries(client, prefix, "a") and _entries(client, prefix, "b"), 10, ""
            )
            listed = _forkpool(
                "ps", "--all-hosts", "--json", "--redis", cluster.url, "--prefix", prefix
            )
            assert listed.returncode == 0, listed.stderr
            assert sorted(row["host"] for row in json.loads(listed.stdout)) == ["a", "b"]
            reaped = _forkpool("reap", "--redis", cluster.url, "--prefix", prefix, "--host", "a")
            assert reaped.returncode == 0, reaped.stderr
            assert reaped.stdout.strip() == "nothing to reap"
            killed = _forkpool(
                "kill-all", "--yes", "--redis", cluster.url, "--prefix", prefix, "--host", "b"
            )
            assert killed.returncode == 0, killed.stderr
            assert killed.stdout.strip() == "stopped 1 tracked child on b"
            error = futures[1].exception(timeout=10)
            assert isinstance(error, ChildDiedError)
            assert "stopped by `forkpool kill-all`" in str(error)
            release.touch()
            assert futures[0].result(timeout=10) == "slept"
            client.close()

    def test_orphans_of_a_killed_parent_are_reaped(self, cluster, prefix, tmp_path):
        """After a parent's SIGKILL, another executor on the cluster stops its orphans."""
        pid_file = tmp_path / "pids"
        client = _cluster_client(cluster)
        parent = start_script(orphan_script(cluster.url, prefix, HOST, pid_file, keep_child=True))
        try:
            pids = read_pids(pid_file)
            wait_for(lambda: _entries(client, prefix), 10, "the entry")
            parent.kill()
            parent.wait(timeout=10)
            assert is_running(pids["child"])
            with ForkPerTaskExecutor(1, redis=cluster.url, key_prefix=prefix, host=HOST, **FAST):
                wait_gone(pids["grandchild"], timeout=10)
                wait_gone(pids["child"], timeout=10)
                wait_for(lambda: not _entries(client, prefix), 10, "the entry to go")
        finally:
            parent.kill()
            parent.wait(timeout=10)
            parent.stdout.close()
            parent.stderr.close()
            client.close()

    def test_a_cycle_touches_only_its_own_hosts_keys(self, cluster):
        """With 100,000 entries of 1,000 other hosts, a cycle sends a handful of commands."""
        client = _cluster_client(cluster)
        prefix = "fpdeploy-crowd"
        now = time.time()
        pipe = client.pipeline(transaction=False)
        for n in range(1000):
            other = Keys(prefix, f"host-{n}")
            pipe.zadd(other.hosts, {other.host: now + 900})
            pipe.zadd(other.active, {f"task-{i}": now + 900 for i in range(100)})
            pipe.hset(other.meta, mapping={f"task-{i}": "{}" for i in range(100)})
        pipe.execute()
        reaper = Reaper(keys=Keys(prefix, HOST), facts=LocalFacts.current(), stopper=Stopper(1))
        try:
            commands = _monitor_cluster(cluster, lambda: reaper.cycle(client))
            assert 1 <= len(commands) <= 8, commands
            assert not [c for c in commands if "host-" in c], commands
        finally:
            for node in cluster.live_masters():
                with node.client() as direct:
                    cleanup = direct.pipeline(transaction=False)
                    for key in direct.scan_iter(match=f"{prefix}:*", count=10_000):
                        cleanup.unlink(key)  # one key a command: they span slots
                    cleanup.execute()
            client.close()
        print(f"\ncommands in one reaper cycle on the cluster: {len(commands)}: {commands}")

    def test_a_plain_url_to_one_node_says_to_use_the_cluster(self, cluster, prefix, caplog):
        """A redis:// URL to one cluster node: tasks run, and the warning says what to pass."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        with _cluster_client(cluster) as client:
            elsewhere = client.keyslot(Keys(prefix, HOST).meta)
        owner = cluster.master_for_slot(elsewhere)
        other = next(node for node in cluster.live_masters() if node is not owner)
        url = f"redis://127.0.0.1:{other.port}/0"
        with ForkPerTaskExecutor(1, redis=url, key_prefix=prefix, host=HOST, **FAST) as ex:
            assert ex.submit(_sleep_until_exists, Path("/nonexistent"), 0.5).result(10) == "slept"
            wait_for(lambda: "is a node of a Redis Cluster" in caplog.text, 10, "the warning")
        assert "redis+cluster:// URL" in caplog.text

    def test_a_master_failover_mid_run(self, own_cluster, prefix, tmp_path, caplog):
        """A master killed mid-run: tasks run on, one warning, leases renewed after recovery."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        cluster = own_cluster
        keys = Keys(prefix, HOST)
        release = tmp_path / "release"
        with ForkPerTaskExecutor(
            2, redis=cluster.url, key_prefix=prefix, host=HOST, reap_interval=0.5, ttl=2.0
        ) as ex:
            running = ex.submit(_sleep_until_exists, release, 60)
            with _cluster_client(cluster) as before:
                wait_for(lambda: _leases(before, prefix), 10, "the lease")
                owner = cluster.master_for_slot(before.keyslot(keys.meta))
                last_lease = max(_leases(before, prefix).values())
            owner.kill()
            killed_at = time.monotonic()
            # Tasks are unaffected while the cluster fails over.
            assert ex.submit(pow, 3, 3).result(timeout=10) == 27
            wait_for(lambda: "works again" in caplog.text, 30, "the recovery")
            recovered_at = time.monotonic()
            with _cluster_client(cluster) as after:
                lease = _leases(after, prefix)
            assert lease
            assert min(lease.values()) > time.time(), lease
            # Same ttl: the leases' difference is the time between the two renewals.
            gap = max(lease.values()) - last_lease
            release.touch()
            assert running.result(timeout=10) == "slept"
        with _cluster_client(cluster) as fresh:
            wait_for(lambda: not _entries(fresh, prefix), 10, "the entries to go")
        warnings = [r.getMessage() for r in caplog.records if "degraded" in r.getMessage()]
        assert len(warnings) == 1, warnings
        # Leases are renewed as soon as writes go through again: the renewals either
        # side of the failover are no further apart than the outage plus one cycle.
        assert gap <= (recovered_at - killed_at) + 0.5 + 1.0, gap
        print(
            f"\ncluster failover: bookkeeping recovered {recovered_at - killed_at:.1f}s after "
            f"the master was killed; renewals {gap:.1f}s apart across it"
        )


class TestSentinel:
    def test_tracking_through_sentinel(self, sentinel, prefix, tmp_path):
        """Through a redis+sentinel URL, entries land on the master; ps reads them."""
        master = sentinel.master.client()
        release = tmp_path / "release"
        with ForkPerTaskExecutor(1, redis=sentinel.url, key_prefix=prefix, host=HOST, **FAST) as ex:
            future = ex.submit(_sleep_until_exists, release, 20)
            wait_for(lambda: _entries(master, prefix), 10, "the entry")
            listed = _forkpool(
                "ps", "--json", "--redis", sentinel.url, "--prefix", prefix, "--host", HOST
            )
            assert listed.returncode == 0, listed.stderr
            assert [row["pid"] for row in json.loads(listed.stdout)] == [future.pid]
            release.touch()
            assert future.result(timeout=10) == "slept"
        wait_for(lambda: not _entries(master, prefix), 10, "the entry to go")
        master.close()

    def test_a_failover_mid_run(self, sentinel, prefix, tmp_path, caplog):
        """The master killed mid-run: one warning, and leases renewed on the new master."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        release = tmp_path / "release"
        reap_interval = 0.5
        with ForkPerTaskExecutor(
            1,
            redis=sentinel.url,
            key_prefix=prefix,
            host=HOST,
            reap_interval=reap_interval,
            ttl=2.0,
        ) as ex:
            future = ex.submit(_sleep_until_exists, release, 60)
            with sentinel.master.client() as first:
                wait_for(lambda: _leases(first, prefix), 10, "the lease")
                last_lease = max(_leases(first, prefix).values())
            sentinel.master.kill()
            killed_at = time.monotonic()
            wait_for(lambda: sentinel.master_port() == sentinel.replica.port, 30, "the failover")
            failed_over_at = time.monotonic()
            wait_for(lambda: "works again" in caplog.text, 30, "the recovery")
            recovered_at = time.monotonic()
            with sentinel.replica.client() as promoted:
                renewed = _leases(promoted, prefix)
                assert renewed
                assert min(renewed.values()) > time.time()
            gap = max(renewed.values()) - last_lease
            release.touch()
            assert future.result(timeout=10) == "slept"
        with sentinel.replica.client() as promoted:
            wait_for(lambda: not _entries(promoted, prefix), 10, "the entry to go")
        warnings = [r.getMessage() for r in caplog.records if "degraded" in r.getMessage()]
        assert len(warnings) == 1, warnings
        # Leases are renewed within one reap_interval of the new master taking writes,
        # so the renewals either side are no further apart than the outage plus that.
        assert recovered_at - failed_over_at <= reap_interval + 2.5, (
            killed_at,
            failed_over_at,
            recovered_at,
        )
        assert gap <= (recovered_at - killed_at) + reap_interval + 1.0, gap
        print(
            f"\nsentinel failover: promoted {failed_over_at - killed_at:.1f}s after the kill; "
            f"bookkeeping recovered {recovered_at - failed_over_at:.1f}s after that; "
            f"renewals {gap:.1f}s apart across it"
        )


class TestUrls:
    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("redis+cluster://127.0.0.1:7000/3", "a cluster has only database 0"),
            ("redis+cluster://127.0.0.1:70x0", "is not host:port"),
            ("redis+sentinel://127.0.0.1:26379", "name the master Sentinel monitors"),
            ("redis+sentinel://127.0.0.1:26379/mymaster/x", "the database must be a number"),
        ],
    )
    def test_bad_urls_are_named(self, url, message):
        """A malformed cluster or Sentinel URL is a ValueError at construction."""
        with pytest.raises(ValueError, match=message):
            ForkPerTaskExecutor(redis=url)

    def test_a_cluster_down_at_start_is_an_outage_not_an_error(self, caplog):
        """A cluster URL whose nodes are all down: the executor starts, tasks run, one warning."""
        caplog.set_level(logging.WARNING, logger="forkpool")
        url = "redis+cluster://127.0.0.1:1,127.0.0.1:2"
        with ForkPerTaskExecutor(2, redis=url, key_prefix="fpdeploy-down", **FAST) as ex:
            assert ex.submit(pow, 2, 8).result(timeout=10) == 256
            wait_for(lambda: "degraded" in caplog.text, 10, "the warning")
        assert sum("degraded" in r.getMessage() for r in caplog.records) == 1

    def test_password_in_a_multi_host_url_is_redacted(self):
        """Passwords in cluster and Sentinel URLs never reach messages."""
        with pytest.raises(ValueError, match=r":\*\*\*@") as info:
            ForkPerTaskExecutor(redis="redis+cluster://:s3cret@127.0.0.1:7000/5")
        assert "s3cret" not in str(info.value)


_HANDSHAKES = {"HELLO", "CLIENT", "CLUSTER", "COMMAND", "PING", "READONLY", "AUTH", "SELECT"}


class _Monitor:
    """MONITOR on one node, from a marker on: every command it serves meanwhile."""

    def __init__(self, port: int, stop: str) -> None:
        self._client = redis.Redis(host="127.0.0.1", port=port)
        self._port = port
        self._stop = stop
        self._start = f"monitor-start-{port}-{time.monotonic_ns()}"
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self.log: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        # MONITOR starts asynchronously: echo until the watcher has seen an echo.
        with redis.Redis(host="127.0.0.1", port=port) as direct:
            wait_for(
                lambda: direct.echo(self._start) and any(self._start in c for c in self.log),
                10,
                "MONITOR",
            )

    def _read(self) -> None:
        for event in self._monitor.listen():
            if self._stop in event["command"]:
                return
            self.log.append(event["command"])

    def finish(self) -> list[str]:
        with redis.Redis(host="127.0.0.1", port=self._port) as direct:
            direct.echo(self._stop)
        self._thread.join(timeout=10)
        self._monitor.__exit__(None, None, None)
        self._client.close()
        begun = max(i for i, command in enumerate(self.log) if self._start in command)
        return self.log[begun + 1 :]


def _monitor_cluster(cluster: Cluster, action) -> list[str]:
    """Every command the cluster's masters served while ``action`` ran."""
    stop = f"monitor-end-{time.monotonic_ns()}"
    monitors = [_Monitor(node.port, stop) for node in cluster.live_masters()]
    action()
    seen = [command for monitor in monitors for command in monitor.finish()]
    # A new connection's handshake and the cluster client's topology reads are not
    # the reaper's commands.
    return [c for c in seen if c.split(" ", 1)[0] not in _HANDSHAKES]
