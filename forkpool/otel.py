"""OpenTelemetry traces through the fork (``pip install 'forkpool[otel]'``).

::

    import forkpool.otel

    forkpool.otel.instrument()   # the global SDK TracerProvider, or instrument(provider)

From then on, for every executor of the process:

- A task's child runs in the trace context that was current in the thread that
  called ``submit()``: a span the task starts is a child of the submitting span.
- Each task gets a span of its own, ``forkpool.task <callable>``, from its fork to its
  reap, child of the submitting span too. It carries the executor, callable, pid,
  outcome, exit code or signal, timeout, and own peak memory; a task that did not
  succeed sets the span's status to ERROR. A task cancelled before its fork gets a
  span from its submit to its cancellation.
- Spans the task's code ends in the child are sent to the parent over the result
  pipe the moment they end, and handed there to the provider's span processors, so
  the parent's exporter sends them. A child leaves by ``os._exit`` and may be killed
  at any moment: what it ended before is already in the pipe; a span still open
  when it dies never ended and is not sent (the task's own span says how it died).

Children forked from the executor's process inherit its provider; its span
processors (and a ``BatchSpanProcessor``'s thread, which does not survive a fork)
are replaced in the child by one that ships each span to the parent. A mold's
child gets a provider of its own that does the same.
"""

from __future__ import annotations

import functools
import pickle
import threading
import time
from typing import TYPE_CHECKING, Any, Final, cast

import attrs
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from forkpool import _observe, _progress, _wire
from forkpool._version import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context

__all__ = ["instrument", "uninstrument"]

_SCOPE: Final = "forkpool"
_PROPAGATOR: Final = TraceContextTextMapPropagator()


# --- in the parent --------------------------------------------------------------------


@attrs.frozen
class _Submitted:
    """What the tracer notes at submit: the context, and when (wall clock, ns)."""

    context: Context
    at_ns: int


@attrs.define(eq=False)
class _Tracing:
    """The observer: task spans in the parent, child spans handed to its processors."""

    provider: TracerProvider
    tracer: trace.Tracer

    def task_submitted(self, accounting: _observe.Accounting) -> _Submitted:
        carrier: dict[str, str] = {}
        current = otel_context.get_current()
        _PROPAGATOR.inject(carrier, context=current)
        # Always: a task submitted outside any span still ships the spans it makes.
        accounting.prelude = functools.partial(_enter_child, carrier)
        return _Submitted(current, time.time_ns())

    def child_spans(self, payload: bytes) -> None:
        processor = cast("SynchronousMultiSpanProcessor", self.provider._active_span_processor)  # noqa: SLF001
        for record in pickle.loads(payload):  # noqa: S301 - from our own child
            processor.on_end(_rebuild(record, self.provider))

    def task_ended(self, ended: _observe.TaskEnded) -> None:
        submitted = ended.notes.get(id(self))
        if not isinstance(submitted, _Submitted):
            return  # submitted before instrument()
        now = time.time_ns()
        start = submitted.at_ns
        if ended.queued is not None:
            start = min(now, start + int(ended.queued * 1e9))
        attributes: dict[str, Any] = {
            "forkpool.executor": ended.executor,
            "code.function.name": ended.callable,
            "forkpool.outcome": ended.outcome,
        }
        optional = {
            "process.pid": ended.pid,
            "process.exit.code": ended.exitcode,
            "forkpool.signal": ended.signal,
            "forkpool.timeout": ended.timeout,
            "forkpool.own_peak_bytes": ended.own_peak_bytes,
        }
        attributes.update({key: value for key, value in optional.items() if value is not None})
        span = self.tracer.start_span(
            f"forkpool.task {ended.callable}",
            context=submitted.context,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=start,
        )
        if ended.outcome != "succeeded":
            span.set_status(Status(StatusCode.ERROR, ended.outcome))
        span.end(end_time=now)

    def orphans_reaped(self, executor: str, count: int) -> None:
        """Not traced."""

    def redis_error(self, executor: str) -> None:
        """Not traced."""


_lock = threading.Lock()
_instrumented: list[_Tracing] = []


def instrument(tracer_provider: TracerProvider | None = None) -> None:
    """Trace every executor's tasks from now on, with ``tracer_provider``'s processors.

    ``tracer_provider``: an SDK ``TracerProvider`` (default: the global one, which
    must be an SDK provider then). Calling it again with the same provider does nothing.

    Raises:
        TypeError: The provider is not the SDK's (a no-op or proxy provider has no
            processors to hand the children's spans to).
        ValueError: Already instrumented with another provider: call
            :func:`uninstrument` first.
    """
    provider = trace.get_tracer_provider() if tracer_provider is None else tracer_provider
    if not isinstance(provider, TracerProvider):
        msg = (
            "forkpool.otel needs an SDK TracerProvider (opentelemetry.sdk.trace), got "
            f"{provider!r}; pass one, or set it with trace.set_tracer_provider() first"
        )
        raise TypeError(msg)
    with _lock:
        if _instrumented:
            if _instrumented[0].provider is provider:
                return
            msg = "forkpool.otel is instrumented with another provider; uninstrument() first"
            raise ValueError(msg)
        tracing = _Tracing(provider, provider.get_tracer(_SCOPE, __version__))
        _instrumented.append(tracing)
        _observe.add_observer(tracing)


def uninstrument() -> None:
    """Stop tracing tasks; a no-op if not instrumented."""
    with _lock:
        if _instrumented:
            _observe.remove_observer(_instrumented.pop())


# --- in the child ----------------------------------------------------------------------


class _ShipToParent(SpanProcessor):
    """Sends each span that ends in the child to the parent, at once, in one frame."""

    def on_end(self, span: ReadableSpan) -> None:
        _progress.send_to_parent(_wire.Kind.SPANS, pickle.dumps([_record(span)], protocol=5))


def _enter_child(carrier: dict[str, str]) -> None:
    """A task's prelude: ship spans to the parent, and enter the submitter's context."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        # Inherited: its processors export from a process about to os._exit, and a
        # batch processor's thread did not survive the fork. Ours replace them.
        provider._active_span_processor = SynchronousMultiSpanProcessor()  # type: ignore[no-untyped-call]  # noqa: SLF001
    else:
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(_ShipToParent())
    otel_context.attach(_PROPAGATOR.extract(carrier))


# --- spans across the pipe --------------------------------------------------------------


def _record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain values (the SDK's span objects do not pickle)."""
    context = span.context
    parent = span.parent
    scope = span.instrumentation_scope
    return {
        "name": span.name,
        "context": None if context is None else _context_record(context),
        "parent": None if parent is None else _context_record(parent),
        "kind": span.kind.value,
        "start": span.start_time,
        "end": span.end_time,
        "attributes": dict(span.attributes or {}),
        "events": [
            (event.name, dict(event.attributes or {}), event.timestamp) for event in span.events
        ],
        "links": [
            (_context_record(link.context), dict(link.attributes or {})) for link in span.links
        ],
        "status": (span.status.status_code.value, span.status.description),
        "scope": None if scope is None else (scope.name, scope.version, scope.schema_url),
    }


def _context_record(context: SpanContext) -> tuple[int, int, int, bool, str]:
    return (
        context.trace_id,
        context.span_id,
        int(context.trace_flags),
        context.is_remote,
        context.trace_state.to_header(),
    )


def _rebuild(record: dict[str, Any], provider: TracerProvider) -> ReadableSpan:
    """The child's span, as the parent's processors take it (the parent's resource)."""
    scope = record["scope"]
    code, description = record["status"]
    return ReadableSpan(
        name=record["name"],
        context=None if record["context"] is None else _span_context(record["context"]),
        parent=None if record["parent"] is None else _span_context(record["parent"]),
        resource=provider.resource,
        attributes=record["attributes"],
        events=[
            Event(name, attributes, timestamp) for name, attributes, timestamp in record["events"]
        ],
        links=[Link(_span_context(context), attributes) for context, attributes in record["links"]],
        kind=SpanKind(record["kind"]),
        status=Status(StatusCode(code), description),
        start_time=record["start"],
        end_time=record["end"],
        instrumentation_scope=None if scope is None else InstrumentationScope(*scope),
    )


def _span_context(values: tuple[int, int, int, bool, str]) -> SpanContext:
    trace_id, span_id, flags, is_remote, state = values
    return SpanContext(
        trace_id,
        span_id,
        is_remote=is_remote,
        trace_flags=TraceFlags(flags),
        trace_state=trace.TraceState.from_header([state]) if state else None,
    )
