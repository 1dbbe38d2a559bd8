"""Prometheus metrics: scraped over real HTTP from prometheus_client's own server."""

from __future__ import annotations

import logging
import os
import signal
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest
from helpers import orphan_script, read_pids, start_script, wait_for, wait_gone

import forkpool
import forkpool.prometheus
from forkpool import ForkPerTaskExecutor
from forkpool._entry import Keys

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.timeout(120)

HOST = "metrics-test-host"


def _raise(message: str) -> None:
    raise ValueError(message)


def _allocate(size: int) -> int:
    return len(bytearray(size))


def _hold(seconds: float) -> None:
    time.sleep(seconds)


napping = forkpool.options(timeout=0.5)(_hold)


class Scraper:
    """A registry with forkpool's metrics in it, served on a real HTTP port."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        forkpool.prometheus.enable(self.registry)
        self.server, self.thread = prometheus_client.start_http_server(
            0, addr="127.0.0.1", registry=self.registry
        )
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of a fresh scrape: (name, labels) -> value."""
        with urllib.request.urlopen(self.url, timeout=10) as response:  # noqa: S310 - our own http URL
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        """One sample's value; 0 if the scrape has no such sample."""
        return self.samples().get((name, frozenset(labels.items())), 0.0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
        forkpool.prometheus.disable()


@pytest.fixture(name="scraper")
def fixture_scraper() -> Iterator[Scraper]:
    scraper = Scraper()
    try:
        yield scraper
    finally:
        scraper.close()


def test_every_count_matches_what_ran(scraper):
    """A known mix of tasks: each outcome, histogram count and the children gauge match."""
    with ForkPerTaskExecutor(2, name="mix") as ex:
        finished = [ex.submit(pow, 2, n) for n in range(5)]
        finished += [ex.submit(_raise, "no") for _ in range(3)]
        finished += [ex.submit(os._exit, 3), ex.submit(os.kill, 0, signal.SIGKILL)]
        limited = forkpool.options(memory_limit=64 << 20)(_allocate)
        finished.append(ex.submit(limited, 512 << 20))
        finished += [ex.submit(napping, 30) for _ in range(2)]
        for future in finished:
            future.exception(timeout=60)
        # Two running, one waiting for a slot: all three cancelled, two after their fork.
        running = [ex.submit(_hold, 60) for _ in range(2)]
        waiting = ex.submit(_hold, 60)
        wait_for(lambda: all(f.pid is not None for f in running), 20, "both forks")
        assert scraper.value("forkpool_children", executor="mix") == 2
        for future in (waiting, *running):
            future.cancel()
        with ForkPerTaskExecutor(1, name="other") as other:
            other.submit(pow, 3, 3).result(timeout=30)
    wait_for(
        lambda: scraper.value("forkpool_tasks_total", executor="mix", outcome="cancelled") == 3, 10
    )

    expected = {
        "succeeded": 5,
        "raised": 3,
        "crashed": 2,
        "memory_limit": 1,
        "timed_out": 2,
        "cancelled": 3,
    }
    for outcome, count in expected.items():
        assert scraper.value("forkpool_tasks_total", executor="mix", outcome=outcome) == count
    assert scraper.value("forkpool_tasks_total", executor="other", outcome="succeeded") == 1
    forked = sum(expected.values()) - 1  # the task cancelled while it waited never forked
    for histogram in (
        "forkpool_task_duration_seconds",
        "forkpool_task_queue_seconds",
        "forkpool_fork_seconds",
        "forkpool_task_own_peak_bytes",
    ):
        assert scraper.value(f"{histogram}_count", executor="mix") == forked, histogram
    assert scraper.value("forkpool_task_duration_seconds_sum", executor="mix") >= 2 * 0.5
    assert scraper.value("forkpool_children", executor="mix") == 0


def test_own_peak_lands_in_its_bucket(scraper):
    """A task adding 40 MiB is counted in the bucket for at most 64 MiB, not 16 MiB."""
    with ForkPerTaskExecutor(1, name="peak") as ex:
        ex.submit(_allocate_and_hold, 40 << 20).result(timeout=30)
    buckets = {
        float(dict(labels)["le"]): value
        for (name, labels), value in scraper.samples().items()
        if name == "forkpool_task_own_peak_bytes_bucket" and ("executor", "peak") in labels
    }
    assert buckets[64 << 20] == 1
    assert buckets[16 << 20] == 0


def _allocate_and_hold(size: int) -> int:
    block = bytearray(b"\x01") * size
    return len(block)


def test_per_callable_label_is_opt_in():
    """per_callable=True adds the task's qualified name to the task counter."""
    registry = prometheus_client.CollectorRegistry()
    forkpool.prometheus.enable(registry, per_callable=True)
    try:
        with ForkPerTaskExecutor(1, name="named") as ex:
            ex.submit(_raise, "x").exception(timeout=30)
        value = registry.get_sample_value(
            "forkpool_tasks_total",
            {"executor": "named", "callable": f"{__name__}._raise", "outcome": "raised"},
        )
        assert value == 1
    finally:
        forkpool.prometheus.disable()


def test_redis_errors_are_counted(scraper):
    """An executor whose Redis refuses connections counts each failed bookkeeping round."""
    with ForkPerTaskExecutor(1, name="no-redis", redis="redis://127.0.0.1:9/0", reap_interval=0.2):
        wait_for(
            lambda: scraper.value("forkpool_redis_errors_total", executor="no-redis") >= 1,
            20,
            "a counted Redis error",
        )


def test_orphans_reaped_are_counted(scraper, redis_url, client, prefix, tmp_path):
    """A parent killed with a live task: the reaper that stops the orphan counts it."""
    pid_file = tmp_path / "pids"
    parent = start_script(orphan_script(redis_url, prefix, HOST, pid_file, keep_child=True))
    try:
        parent.stdout.readline()  # type: ignore[union-attr]
        pids = read_pids(pid_file)
        meta = Keys(prefix, HOST).meta
        wait_for(lambda: client.hlen(meta) == 1, 10, "the orphan's entry in Redis")
        parent.kill()
        parent.wait(timeout=10)
        with ForkPerTaskExecutor(
            1, redis=redis_url, key_prefix=prefix, host=HOST, reap_interval=0.2, name="reaper"
        ):
            wait_gone(pids["child"], timeout=10)
            wait_for(
                lambda: scraper.value("forkpool_orphans_reaped_total", executor="reaper") == 1,
                10,
                "the orphan counted",
            )
    finally:
        parent.kill()
        parent.wait(timeout=10)
        parent.stdout.close()  # type: ignore[union-attr]
        parent.stderr.close()  # type: ignore[union-attr]


def test_enable_is_idempotent_and_guards_its_registry():
    """enable() twice is one set of metrics; another registry needs disable() first."""
    first = prometheus_client.CollectorRegistry()
    forkpool.prometheus.enable(first)
    try:
        forkpool.prometheus.enable(first)
        with pytest.raises(ValueError, match=r"disable\(\) first"):
            forkpool.prometheus.enable(prometheus_client.CollectorRegistry())
    finally:
        forkpool.prometheus.disable()
    forkpool.prometheus.disable()  # off already: nothing to do
    with pytest.raises(TypeError, match="CollectorRegistry"):
        forkpool.prometheus.enable("registry")  # type: ignore[arg-type]


def test_without_metrics_futures_carry_no_accounting():
    """With metrics off, a task's future gets no done-callback of forkpool's."""
    with ForkPerTaskExecutor(1) as ex:
        future = ex.submit(pow, 2, 2)
        future.result(timeout=30)
    assert future._accounting is None
    assert future._done_callbacks == []


def test_name_must_be_a_non_empty_string():
    """name= is checked: an empty or non-string name is a ValueError naming it."""
    for bad in ("", 3):
        with pytest.raises(ValueError, match="name must be a non-empty string"):
            ForkPerTaskExecutor(1, name=bad)  # type: ignore[arg-type]


def _deaf_to_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(30)


def _fail_callback(future: forkpool.ForkFuture[None]) -> None:
    msg = f"callback of {future.pid} failed"
    raise RuntimeError(msg)


def test_log_lines_about_a_task_name_it_in_extra(caplog):
    """Each log line forkpool writes about a task carries task_id, pid and callable."""
    caplog.set_level(logging.DEBUG, logger="forkpool")
    deaf = forkpool.options(timeout=0.3, kill_grace=0.2)(_deaf_to_sigterm)
    with ForkPerTaskExecutor(1) as ex:
        future = ex.submit(deaf)
        future.add_done_callback(_fail_callback)
        future.exception(timeout=30)
    about_it = [record for record in caplog.records if getattr(record, "pid", None) == future.pid]
    messages = [record.getMessage() for record in about_it]
    assert any("ignored SIGTERM" in message for message in messages), messages
    assert any("ended" in message for message in messages), messages
    assert any("exception calling callback" in message for message in messages), messages
    for record in about_it:
        assert record.callable == f"{__name__}._deaf_to_sigterm"  # type: ignore[attr-defined]
        assert hasattr(record, "task_id")  # None without Redis tracking
