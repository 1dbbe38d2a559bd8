"""Prometheus metrics for every executor of the process (``pip install 'forkpool[prometheus]'``).

::

    import forkpool.prometheus
    import prometheus_client

    forkpool.prometheus.enable()            # the default registry; or enable(registry)
    prometheus_client.start_http_server(9808)

The metrics live in the executor's process: a child is counted by the process that
forked it, when its future resolves, so there is no file per child and nothing
like prometheus_client's multiprocess mode to set up.

- ``forkpool_tasks_total{executor, outcome}``: tasks ended, by outcome
  (``succeeded``, ``raised``, ``timed_out``, ``cancelled``, ``crashed``,
  ``memory_limit``). A task cancelled before it was forked counts too.
- ``forkpool_task_duration_seconds{executor}``: run time, fork to reap.
- ``forkpool_task_queue_seconds{executor}``: submit to fork.
- ``forkpool_fork_seconds{executor}``: the fork itself (from a mold: its answer).
- ``forkpool_task_own_peak_bytes{executor}``: each task's own memory at its peak
  (``ResourceUsage.own_peak_bytes``).
- ``forkpool_children{executor}``: children running now, read at each scrape.
- ``forkpool_orphans_reaped_total{executor}``: orphaned tasks the reaper stopped.
- ``forkpool_redis_errors_total{executor}``: failed Redis commands of the bookkeeping.

``executor`` is the executor's ``name=`` (default ``"default"``). With
``enable(per_callable=True)``, ``forkpool_tasks_total`` and
``forkpool_task_duration_seconds`` also carry ``callable`` (the task's
``module.qualname``): only for programs whose set of task functions is small.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Final, cast

import attrs
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from forkpool import _observe

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["disable", "enable"]

# Seconds: from a fork's millisecond to an hours-long task.
_TIME_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
# Bytes: 1 MiB to 64 GiB, by fours.
_BYTE_BUCKETS: Final = tuple(float(1 << shift) for shift in range(20, 37, 2))


class _ChildrenCollector:
    """``forkpool_children``, counted at scrape time (it costs tasks nothing)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "forkpool_children", "Children running now.", labels=["executor"]
        )
        for executor, count in sorted(_observe.running_children().items()):
            family.add_metric([executor], count)
        yield family

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # no samples at registration time: collect() runs at scrapes only


@attrs.define(eq=False)
class _Metrics:
    """The collectors in one registry, and the observer that feeds them."""

    registry: CollectorRegistry
    per_callable: bool
    tasks: Counter
    duration: Histogram
    queued: Histogram
    fork: Histogram
    own_peak: Histogram
    orphans: Counter
    redis_errors: Counter
    children: _ChildrenCollector

    @classmethod
    def register(cls, registry: CollectorRegistry, *, per_callable: bool) -> _Metrics:
        by = ["executor", "callable"] if per_callable else ["executor"]
        children = _ChildrenCollector()
        metrics = cls(
            registry=registry,
            per_callable=per_callable,
            tasks=Counter(
                "forkpool_tasks_total",
                "Tasks ended, by outcome.",
                [*by, "outcome"],
                registry=registry,
            ),
            duration=Histogram(
                "forkpool_task_duration_seconds",
                "Run time of each task, fork to reap.",
                by,
                buckets=_TIME_BUCKETS,
                registry=registry,
            ),
            queued=Histogram(
                "forkpool_task_queue_seconds",
                "Time from submit() to the task's fork.",
                ["executor"],
                buckets=_TIME_BUCKETS,
                registry=registry,
            ),
            fork=Histogram(
                "forkpool_fork_seconds",
                "Time the fork took (from a mold: until its answer).",
                ["executor"],
                buckets=_TIME_BUCKETS,
                registry=registry,
            ),
            own_peak=Histogram(
                "forkpool_task_own_peak_bytes",
                "Memory each task added beyond what it inherited, at its peak.",
                ["executor"],
                buckets=_BYTE_BUCKETS,
                registry=registry,
            ),
            orphans=Counter(
                "forkpool_orphans_reaped_total",
                "Orphaned tasks the reaper stopped.",
                ["executor"],
                registry=registry,
            ),
            redis_errors=Counter(
                "forkpool_redis_errors_total",
                "Redis commands of forkpool's bookkeeping that failed.",
                ["executor"],
                registry=registry,
            ),
            children=children,
        )
        registry.register(children)
        return metrics

    def unregister(self) -> None:
        for collector in (
            self.tasks,
            self.duration,
            self.queued,
            self.fork,
            self.own_peak,
            self.orphans,
            self.redis_errors,
            self.children,
        ):
            self.registry.unregister(collector)

    # --- the observer (see forkpool._observe) ---------------------------------------

    def task_submitted(self, accounting: _observe.Accounting) -> None:
        """Nothing to note: the counts come at the end."""

    def child_spans(self, payload: bytes) -> None:
        """Spans are not metrics."""

    def task_ended(self, ended: _observe.TaskEnded) -> None:
        by = (ended.executor, ended.callable) if self.per_callable else (ended.executor,)
        self.tasks.labels(*by, ended.outcome).inc()
        if ended.duration is not None:
            self.duration.labels(*by).observe(ended.duration)
        if ended.queued is not None:
            self.queued.labels(ended.executor).observe(ended.queued)
        if ended.fork is not None:
            self.fork.labels(ended.executor).observe(ended.fork)
        if ended.own_peak_bytes is not None:
            self.own_peak.labels(ended.executor).observe(ended.own_peak_bytes)

    def orphans_reaped(self, executor: str, count: int) -> None:
        self.orphans.labels(executor).inc(count)

    def redis_error(self, executor: str) -> None:
        self.redis_errors.labels(executor).inc()


_lock = threading.Lock()
_enabled: list[_Metrics] = []


def enable(registry: CollectorRegistry | None = None, *, per_callable: bool = False) -> None:
    """Turn metrics on for every executor of this process, from now on.

    ``registry``: where the metrics go (default: prometheus_client's default
    registry). Calling it again with the same arguments does nothing.

    Raises:
        ValueError: Metrics are already on with another registry or another
            ``per_callable``: call :func:`disable` first.
        TypeError: ``registry`` is not a ``CollectorRegistry``.
    """
    target = REGISTRY if registry is None else registry
    if not isinstance(cast("object", target), CollectorRegistry):
        msg = f"registry must be a prometheus_client CollectorRegistry, got {registry!r}"
        raise TypeError(msg)
    with _lock:
        if _enabled:
            current = _enabled[0]
            if current.registry is target and current.per_callable == per_callable:
                return
            msg = (
                "forkpool's metrics are already enabled "
                f"(per_callable={current.per_callable}) in another registry or with "
                "another per_callable; call forkpool.prometheus.disable() first"
            )
            raise ValueError(msg)
        metrics = _Metrics.register(target, per_callable=per_callable)
        _enabled.append(metrics)
        _observe.add_observer(metrics)


def disable() -> None:
    """Turn metrics off and take them out of their registry; a no-op if they are off."""
    with _lock:
        if not _enabled:
            return
        metrics = _enabled.pop()
        _observe.remove_observer(metrics)
        metrics.unregister()
