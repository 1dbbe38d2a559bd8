"""Building the Redis client forkpool's bookkeeping uses: one server, a cluster, Sentinel.

A client built here from a URL has short socket timeouts and redis-py's own
``Retry`` with a capped exponential backoff, so an outage is noticed within a few
seconds and recovery is quick. (redis-py's defaults would retry internally and
block for much longer.) A client passed in by the user is used as given.

URLs: ``redis://``, ``rediss://`` and ``unix://`` as redis-py reads them;
``redis+cluster://[user:password@]host:port,host:port,...`` (``rediss+cluster`` for
TLS) for a Redis Cluster, any of its nodes; and
``redis+sentinel://[user:password@]host:port,.../service_name[/db]`` (``rediss+sentinel``)
for the master Sentinel names ``service_name``, whose credentials the password is.

A cluster client connects as it is built, so clients are made on first use, in
the thread that uses them: a cluster that is down when an executor starts is an
outage like any other, not a failed constructor.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from typing import TYPE_CHECKING, Any, Final, TypeAlias, cast

import attrs
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, MovedError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from forkpool._tracking import redis_asked_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.client import Pipeline
    from redis.cluster import ClusterPipeline

_PLAIN: Final = ("redis", "rediss", "unix")
_CLUSTER: Final = ("redis+cluster", "rediss+cluster")
_SENTINEL: Final = ("redis+sentinel", "rediss+sentinel")
_SCHEMES: Final = (*_PLAIN, *_CLUSTER, *_SENTINEL)
_DEFAULT_PORTS: Final = {"cluster": 6379, "sentinel": 26379}
_SOCKET_TIMEOUT: Final = 1.0
_RETRIES: Final = 2

Client: TypeAlias = redis.Redis | RedisCluster
"""What forkpool talks to: one server (Sentinel's master included) or a cluster."""

FAILURES: Final = (redis.RedisError, RedisClusterException)
"""Everything a Redis command can raise for Redis's sake. RedisClusterException
(CrossSlotTransactionError, a cluster that cannot be reached) is not a RedisError."""


@attrs.define
class RedisSource:
    """Where forkpool's Redis is, its client once made, and whether forkpool owns it."""

    connect: Callable[[], Client]
    owned: bool
    description: str
    _client: Client | None = None

    @classmethod
    def given(cls, client: Client) -> RedisSource:
        """A client the user made: used as given, never closed by forkpool."""
        return cls(lambda: client, owned=False, description=repr(client), client=client)

    @property
    def client(self) -> Client:
        """The client, made on first use.

        Raises:
            redis.RedisError, RedisClusterException: It cannot be made (a cluster down).
        """
        if self._client is None:
            self._client = self.connect()
        return self._client

    def after_failure(self) -> None:
        """A command failed: have a cluster client read the slot map again.

        A plain cluster command does so by itself when its node is gone; a
        transaction pipeline does not, and would keep sending to a master that was
        failed over.
        """
        if isinstance(self._client, RedisCluster):
            with contextlib.suppress(*FAILURES):  # the next attempt tries again
                self._client.nodes_manager.initialize()

    def close(self) -> None:
        """Close the client if forkpool made it (and, for Sentinel, its Sentinel clients)."""
        if not self.owned or self._client is None:
            return
        pool = getattr(self._client, "connection_pool", None)  # a cluster has none
        manager = getattr(pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            sentinel.close()
        self._client.close()


def resolve_redis(value: object, *, reap_interval: float) -> RedisSource | None:
    """Turn the executor's ``redis=`` argument into a source, or None for no Redis.

    None reads ``FORKPOOL_REDIS_URL``; False means no Redis, whatever it says.

    Raises:
        ValueError: A URL with an unsupported scheme, or one that cannot be parsed.
        TypeError: Neither None, False, a URL string, a ``redis.Redis`` nor a
            ``RedisCluster``.
    """
    value = redis_asked_for(value)
    if value is None:
        return None
    if isinstance(value, (redis.Redis, RedisCluster)):
        return RedisSource.given(value)
    if not isinstance(value, str):
        msg = (
            "redis must be None, False, a URL, a redis.Redis or a redis.cluster.RedisCluster "
            f"client, got {type(value).__name__}"
        )
        raise TypeError(msg)
    connect = client_factory(value, reap_interval=reap_interval)
    return RedisSource(connect, owned=True, description=redact(value))


def client_from_url(url: str, *, reap_interval: float = 30.0) -> Client:
    """A client for ``url`` (made now) with short timeouts and a bounded, capped retry.

    Raises:
        ValueError: The URL's scheme is unsupported, or the URL is otherwise invalid.
        redis.RedisError, RedisClusterException: A cluster cannot be reached.
    """
    return client_factory(url, reap_interval=reap_interval)()


def client_factory(url: str, *, reap_interval: float = 30.0) -> Callable[[], Client]:
    """Check ``url`` now; return what makes its client (see the module docstring).

    Raises:
        ValueError: The URL's scheme is unsupported, or the URL is otherwise invalid.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _SCHEMES:
        msg = (
            f"unsupported Redis URL {redact(url)!r}: the scheme must be one of "
            f"{', '.join(s + '://' for s in _SCHEMES)}"
        )
        raise ValueError(msg)
    backoff = ExponentialBackoff(cap=min(2.0, reap_interval / 2), base=0.05)
    options: dict[str, Any] = {
        "socket_connect_timeout": _SOCKET_TIMEOUT,
        "socket_timeout": _SOCKET_TIMEOUT,
        "retry": Retry(backoff, _RETRIES),
    }
    if scheme in _CLUSTER:
        nodes, credentials, path = _parse_nodes(url, "cluster")
        if path.strip("/") not in ("", "0"):
            msg = f"invalid Redis URL {redact(url)!r}: a cluster has only database 0"
            raise ValueError(msg)
        startup = [ClusterNode(host, port) for host, port in nodes]  # type: ignore[no-untyped-call]
        cluster_options = {**options, **credentials, "ssl": scheme.startswith("rediss")}
        return lambda: RedisCluster(startup_nodes=startup, **cluster_options)
    if scheme in _SENTINEL:
        nodes, credentials, path = _parse_nodes(url, "sentinel")
        service, db = _service_and_db(url, path)
        tls = {"ssl": scheme.startswith("rediss")}
        return lambda: _sentinel_master(
            nodes,
            service,
            sentinel_options={**options, **tls},
            master_options={**options, **tls, **credentials, "db": db},
        )
    try:
        redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        msg = f"invalid Redis URL {redact(url)!r}: {exc}"
        raise ValueError(msg) from None
    return lambda: redis.Redis.from_url(
        url, retry_on_error=[redis.ConnectionError, redis.TimeoutError], **options
    )


def _sentinel_master(
    nodes: list[tuple[str, int]],
    service: str,
    *,
    sentinel_options: dict[str, Any],
    master_options: dict[str, Any],
) -> redis.Redis:
    """A client of the master the Sentinels name; it follows a failover by asking again."""
    # Any: redis-py types Sentinel from 8.2 on, and not before; either must check.
    make_sentinel: Any = Sentinel
    sentinel = make_sentinel(nodes, sentinel_kwargs=sentinel_options, **sentinel_options)
    return cast("redis.Redis", sentinel.master_for(service, **master_options))


def _parse_nodes(url: str, kind: str) -> tuple[list[tuple[str, int]], dict[str, str], str]:
    """(host, port) pairs, credentials and path of a URL naming several servers."""
    parts = urllib.parse.urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    credentials: dict[str, str] = {}
    if userinfo:
        username, _, password = userinfo.partition(":")
        if username:
            credentials["username"] = urllib.parse.unquote(username)
        if password:
            credentials["password"] = urllib.parse.unquote(password)
    nodes: list[tuple[str, int]] = []
    for item in (part.strip() for part in hosts.split(",")):
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        port = port or str(_DEFAULT_PORTS[kind])
        if not host or not port.isdigit():
            msg = f"invalid Redis URL {redact(url)!r}: {item!r} is not host:port"
            raise ValueError(msg)
        nodes.append((host, int(port)))
    return nodes, credentials, parts.path


def _service_and_db(url: str, path: str) -> tuple[str, int]:
    service, _, db = path.strip("/").partition("/")
    if not service:
        msg = (
            f"invalid Redis URL {redact(url)!r}: name the master Sentinel monitors, "
            "redis+sentinel://host:port,.../service_name/db"
        )
        raise ValueError(msg)
    if db and not db.isdigit():
        msg = f"invalid Redis URL {redact(url)!r}: the database must be a number, got {db!r}"
        raise ValueError(msg)
    return service, int(db or 0)


def per_host_pipeline(client: Client) -> Pipeline | ClusterPipeline:
    """A transaction for commands on one host's keys, which all share one hash slot.

    A cluster client older than redis-py's transactions in cluster mode refuses
    ``transaction=True``; there the commands are pipelined to the slot's node
    (the reaper removes a half-written entry as malformed, and the owner
    rewrites it).
    """
    try:
        return client.pipeline(transaction=True)
    except RedisClusterException:
        return client.pipeline(transaction=False)


def describe_failure(exc: Exception, where: str) -> str:
    """One line saying what went wrong with the Redis at ``where``, for people.

    Credentials refused are not "unreachable": a server that answers with an auth
    error is reachable, and the fix is in the URL, not the network.
    """
    if isinstance(exc, redis.AuthenticationError):
        text = str(exc)
        if "HELLO must be called" in text or "NOAUTH" in text or "Authentication required" in text:
            return (
                f"Redis at {where} requires a password and none was given: put it in "
                "the URL (redis://:PASSWORD@host:port/db, or redis://USER:PASSWORD@...)"
            )
        return f"Redis at {where} refused the credentials in the URL ({_first_sentence(text)})"
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return f"cannot reach Redis at {where}: {exc}"
    if isinstance(exc, RedisClusterException):
        return f"the Redis cluster at {where} fails: {exc}"
    if isinstance(exc, (MovedError, AskError)) and not where.startswith(_CLUSTER):
        return (
            f"Redis at {where} is a node of a Redis Cluster and redirects ({exc}): give "
            "a redis+cluster:// URL or a redis.cluster.RedisCluster client"
        )
    return f"Redis at {where} answers with errors ({exc})"


def _first_sentence(text: str) -> str:
    return text.strip().split(". ")[0].rstrip(".")


def redact(url: str) -> str:
    """The URL without its password, fit for logs and error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
