"""OpenTelemetry through the fork: the SDK's in-memory exporter in the parent."""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import forkpool
import forkpool.otel
from forkpool import ForkPerTaskExecutor, Mold

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

pytestmark = pytest.mark.timeout(180)

TASKS = 200
TIMEOUTS = range(0, TASKS, 25)  # 8 tasks that outlive their timeout
CRASHES = range(12, TASKS, 25)  # 8 that die by os._exit


def _work(i: int) -> int:
    """Start and end a span, then return, hang past the timeout, or crash."""
    tracer = trace.get_tracer("tests.work")
    with tracer.start_as_current_span(f"inner-{i}") as span:
        span.set_attribute("i", i)
        with tracer.start_as_current_span(f"nested-{i}"):
            pass
    if i in TIMEOUTS:
        time.sleep(30)
    if i in CRASHES:
        os._exit(3)
    return i


@pytest.fixture(name="exporter")
def fixture_exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    forkpool.otel.instrument(provider)
    try:
        yield provider, exporter
    finally:
        forkpool.otel.uninstrument()


@pytest.mark.parametrize("mode", ["fork", "mold"])
def test_two_hundred_tasks_lose_no_span(exporter, mode):
    """Every child span arrives, under the submitting span, timeouts and crashes included."""
    provider, memory = exporter
    tracer = provider.get_tracer("tests")
    with (
        # The mold imports this module once, not each child (a timeout counts from the fork).
        Mold(preload=(__name__,)) if mode == "mold" else contextlib.nullcontext() as mold,
        ForkPerTaskExecutor(4, mold=mold, name="traced") as ex,
        tracer.start_as_current_span("request") as request,
    ):
        futures = [
            ex.submit(forkpool.options(timeout=3.0)(_work) if i in TIMEOUTS else _work, i)
            for i in range(TASKS)
        ]
        for future in futures:
            future.exception(timeout=120)
    root = request.get_span_context()
    spans = memory.get_finished_spans()
    by_name = {span.name: span for span in spans}
    missing = [i for i in range(TASKS) if f"inner-{i}" not in by_name]
    assert not missing, (missing, sorted(by_name)[:20])
    for i in range(TASKS):
        inner = by_name[f"inner-{i}"]
        assert inner.context.trace_id == root.trace_id
        assert inner.parent is not None
        assert inner.parent.span_id == root.span_id  # the submitting span
        assert inner.attributes["i"] == i
        assert inner.resource is provider.resource
        nested = by_name[f"nested-{i}"]
        assert nested.parent.span_id == inner.context.span_id  # type: ignore[union-attr]
    tasks = [span for span in spans if span.name == f"forkpool.task {__name__}._work"]
    assert len(tasks) == TASKS
    outcomes = _count(task.attributes["forkpool.outcome"] for task in tasks)
    assert outcomes == {
        "succeeded": TASKS - len(TIMEOUTS) - len(CRASHES),
        "timed_out": len(TIMEOUTS),
        "crashed": len(CRASHES),
    }
    for task in tasks:
        assert task.parent.span_id == root.span_id  # type: ignore[union-attr]
        assert task.attributes["forkpool.executor"] == "traced"
        assert task.attributes["process.pid"] > 0
        assert task.attributes["forkpool.own_peak_bytes"] >= 0
        failed = task.attributes["forkpool.outcome"] != "succeeded"
        assert (task.status.status_code is StatusCode.ERROR) is failed
    crashed = [task for task in tasks if task.attributes["forkpool.outcome"] == "crashed"]
    assert {task.attributes["process.exit.code"] for task in crashed} == {3}
    timed_out = [task for task in tasks if task.attributes["forkpool.outcome"] == "timed_out"]
    assert {task.attributes["forkpool.timeout"] for task in timed_out} == {3.0}
    assert all(task.attributes["forkpool.signal"] > 0 for task in timed_out)


def test_a_task_submitted_outside_any_span_still_ships_its_spans(exporter):
    """No current span at submit: the child's span is a root, and it still arrives."""
    _, memory = exporter
    with ForkPerTaskExecutor(1) as ex:
        assert ex.submit(_work, 1).result(timeout=30) == 1
    inner = next(span for span in memory.get_finished_spans() if span.name == "inner-1")
    assert inner.parent is None


def test_a_task_cancelled_before_its_fork_gets_an_error_span(exporter):
    """A task cancelled while it waited for a slot still has its span, marked cancelled."""
    _, memory = exporter
    with ForkPerTaskExecutor(1) as ex:
        blocker = ex.submit(time.sleep, 30)
        waiting = ex.submit(_work, 5)
        assert waiting.cancel()
        blocker.cancel()
    spans = [span for span in memory.get_finished_spans() if span.name.startswith("forkpool.task")]
    cancelled = [span for span in spans if span.attributes["forkpool.outcome"] == "cancelled"]
    assert len(cancelled) == 2
    assert all(span.status.status_code is StatusCode.ERROR for span in cancelled)


def test_instrument_needs_an_sdk_provider_and_guards_its_own():
    """A non-SDK provider is a TypeError; another provider while instrumented, ValueError."""
    with pytest.raises(TypeError, match="SDK TracerProvider"):
        forkpool.otel.instrument(trace.NoOpTracerProvider())  # type: ignore[arg-type]
    first = TracerProvider()
    forkpool.otel.instrument(first)
    try:
        forkpool.otel.instrument(first)  # again: nothing
        with pytest.raises(ValueError, match=r"uninstrument\(\) first"):
            forkpool.otel.instrument(TracerProvider())
    finally:
        forkpool.otel.uninstrument()
    forkpool.otel.uninstrument()  # not instrumented: nothing


def _count(values: Iterable[object]) -> dict[object, int]:
    counts: dict[object, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts
