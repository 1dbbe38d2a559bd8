"""Building the Redis client forkpool's bookkeeping uses.

A client built here from a URL has short socket timeouts and redis-py's own
``Retry`` with a capped exponential backoff, so an outage is noticed within a few
seconds and recovery is quick. (redis-py's defaults would retry internally and
block for much longer.) A client passed in by the user is used as given.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Final

import attrs
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

URL_ENV: Final = "FORKPOOL_REDIS_URL"
_SCHEMES: Final = ("redis", "rediss", "unix")
_SOCKET_TIMEOUT: Final = 1.0
_RETRIES: Final = 2


@attrs.frozen
class RedisSource:
    """A Redis client and whether forkpool created it (and so must close it)."""

    client: redis.Redis
    owned: bool
    description: str


def resolve_redis(value: object, *, reap_interval: float) -> RedisSource | None:
    """Turn the executor's ``redis=`` argument into a client, or None for no Redis.

    Raises:
        ValueError: A URL with an unsupported scheme, or one redis-py cannot parse.
        TypeError: Neither None, a URL string nor a ``redis.Redis``.
    """
    if value is None:
        value = os.environ.get(URL_ENV, "").strip() or None
        if value is None:
            return None
    if isinstance(value, redis.Redis):
        return RedisSource(value, owned=False, description=repr(value))
    if not isinstance(value, str):
        msg = f"redis must be None, a URL or a redis.Redis client, got {type(value).__name__}"
        raise TypeError(msg)
    return RedisSource(
        client_from_url(value, reap_interval=reap_interval),
        owned=True,
        description=redact(value),
    )


def client_from_url(url: str, *, reap_interval: float = 30.0) -> redis.Redis:
    """A client for ``url`` with short timeouts and a bounded, capped retry.

    Raises:
        ValueError: The scheme is not redis://, rediss:// or unix://, or the URL is
            otherwise invalid.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _SCHEMES:
        msg = (
            f"unsupported Redis URL {redact(url)!r}: the scheme must be one of "
            f"{', '.join(s + '://' for s in _SCHEMES)}"
        )
        raise ValueError(msg)
    backoff = ExponentialBackoff(cap=min(2.0, reap_interval / 2), base=0.05)
    try:
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=_SOCKET_TIMEOUT,
            socket_timeout=_SOCKET_TIMEOUT,
            retry=Retry(backoff, _RETRIES),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
    except ValueError as exc:
        msg = f"invalid Redis URL {redact(url)!r}: {exc}"
        raise ValueError(msg) from None


def describe_failure(exc: redis.RedisError, where: str) -> str:
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
