"""The ``forkpool_*`` Celery settings, turned into an executor's arguments.

Every setting is optional; each maps to the executor argument of the same name::

    app.conf.forkpool_redis = "redis://localhost:6379/1"   # or a client; False: none
    app.conf.forkpool_key_prefix = "forkpool"
    app.conf.forkpool_host = None            # None: the worker's node name
    app.conf.forkpool_kill_grace = 5.0
    app.conf.forkpool_close_fds = True
    app.conf.forkpool_pass_fds = ()
    app.conf.forkpool_memory_limit = None
    app.conf.forkpool_ttl = 900
    app.conf.forkpool_reap_interval = 30
    app.conf.forkpool_fork_from = "mold"     # or "worker" (see forkpool.celery._mold)
    app.conf.forkpool_metrics_port = None    # a port: Prometheus metrics (see _metrics)

Without ``forkpool_redis``, children are tracked in ``FORKPOOL_REDIS_URL`` if it is
set, else in the broker when the broker is Redis (the gem keeps its entries in
Sidekiq's Redis the same way), else not at all.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

from forkpool._tracking import HOST_ENV, URL_ENV

if TYPE_CHECKING:
    from celery import Celery

_PREFIX: Final = "forkpool_"
# Setting name (without the prefix) -> the executor's default when it is unset.
_DEFAULTS: Final[dict[str, object]] = {
    "key_prefix": "forkpool",
    "kill_grace": 5.0,
    "close_fds": True,  # a task has no business with the worker's broker sockets
    "pass_fds": (),
    "memory_limit": None,
    "ttl": 900,
    "reap_interval": 30,
}
_REDIS_SCHEMES: Final = ("redis", "rediss")


def executor_kwargs(app: Celery, *, node_name: str | None) -> dict[str, Any]:
    """The executor arguments that ``app``'s settings ask for.

    ``node_name``: the worker's (``celery@host``); children are tracked under it, so
    that one worker's shutdown stops its own children and no other worker's on the
    same machine.
    """
    conf = app.conf
    kwargs: dict[str, Any] = {
        name: conf.get(_PREFIX + name, default) for name, default in _DEFAULTS.items()
    }
    kwargs["redis"] = tracking_redis(app)
    host = conf.get(_PREFIX + "host") or os.environ.get(HOST_ENV, "").strip() or node_name
    if host:
        kwargs["host"] = host
    return kwargs


def tracking_redis(app: Celery) -> object:
    """The ``redis`` argument: the setting, else the environment, else a Redis broker.

    False if none of them says where: no tracking.
    """
    given = app.conf.get(_PREFIX + "redis")
    if given is not None:
        return given
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV]
    broker = app.conf.broker_url
    if isinstance(broker, str) and urllib.parse.urlsplit(broker).scheme in _REDIS_SCHEMES:
        return broker
    return False


def explain(error: Exception) -> Exception:
    """The executor's complaint about an argument, said in terms of the settings."""
    text = str(error)
    for name in (*_DEFAULTS, "redis", "host"):
        if text.startswith(f"{name} "):
            return type(error)(f"Celery setting {_PREFIX}{name}: {text}")
    return type(error)(f"forkpool's Celery settings ({_PREFIX}*): {text}")
