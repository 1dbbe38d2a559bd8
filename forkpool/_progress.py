"""Progress from a running child to its future: ``forkpool.report_progress(value)``.

In a child, reports travel on the same pipe as the result, as frames the parent
reads as they arrive; a lock keeps frames from threads of the task whole. Outside a
forkpool child the call does nothing but warn.
"""

from __future__ import annotations

import threading
import warnings

import attrs

from forkpool._wire import Kind, dumps, write_frame


@attrs.define
class _Channel:
    fd: int
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def send(self, kind: Kind, payload: bytes) -> None:
        with self.lock:
            write_frame(self.fd, kind, payload)


class _ChildState:
    """The reporting channel of this process, set only inside a forkpool child."""

    channel: _Channel | None = None


def open_channel(fd: int) -> _Channel:
    """In a new child: route report_progress() and the outcome through ``fd``."""
    channel = _ChildState.channel = _Channel(fd)
    return channel


def report_progress(value: object) -> None:
    """Send ``value`` to the parent, where the task's future receives it.

    Call it from inside a task (any thread of it). The value is pickled like a
    result; the parent reads it as it arrives and never blocks on it. Outside a
    forkpool child this does nothing and warns.

    Raises:
        ResultNotPicklableError: The value cannot be pickled.
    """
    channel = _ChildState.channel
    if channel is None:
        warnings.warn(
            "forkpool.report_progress() called outside a forkpool task; ignored",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    try:
        payload = dumps(value)
    except Exception as exc:
        from forkpool._errors import ResultNotPicklableError  # noqa: PLC0415 - rare path

        msg = f"progress value of type {type(value).__qualname__} could not be pickled: {exc}"
        raise ResultNotPicklableError(msg) from exc
    channel.send(Kind.PROGRESS, payload)
