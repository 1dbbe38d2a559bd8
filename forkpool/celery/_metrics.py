"""``forkpool_metrics_port``: the Celery pool's Prometheus metrics, with one setting.

::

    app.conf.forkpool_metrics_port = 9808    # None (the default): no metrics
    app.conf.forkpool_metrics_addr = "0.0.0.0"

The worker then serves ``forkpool.prometheus``' metrics (and prometheus_client's
default process metrics) over HTTP on that port, from the worker process, for as
long as the pool runs. The ``executor`` label is the worker's node name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

_PORT = "forkpool_metrics_port"
_ADDR = "forkpool_metrics_addr"
_PORT_MAX = 65535


def serve(app: Celery) -> Any:
    """Start the metrics' HTTP server if the settings ask for one; the server, or None.

    Raises:
        ValueError: The port setting is not a port number.
        RuntimeError: prometheus_client is not installed, or the port is taken.
    """
    port = app.conf.get(_PORT)
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= _PORT_MAX:
        msg = f"Celery setting {_PORT} must be a port number (0-65535) or None, got {port!r}"
        raise ValueError(msg)
    addr = app.conf.get(_ADDR) or "0.0.0.0"  # noqa: S104 - a metrics port is meant to be scraped
    try:
        import prometheus_client  # noqa: PLC0415 - an optional dependency

        import forkpool.prometheus  # noqa: PLC0415
    except ImportError as exc:
        msg = f"Celery setting {_PORT} needs prometheus_client: pip install 'forkpool[prometheus]'"
        raise RuntimeError(msg) from exc
    forkpool.prometheus.enable()
    try:
        server, _ = prometheus_client.start_http_server(port, addr=addr)
    except OSError as exc:
        msg = f"Celery setting {_PORT}: cannot serve metrics on {addr}:{port}: {exc}"
        raise RuntimeError(msg) from exc
    return server


def stop(server: Any) -> None:
    """Stop a server :func:`serve` started."""
    if server is not None:
        server.shutdown()
        server.server_close()
