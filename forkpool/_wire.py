"""The child-to-parent wire: length-prefixed frames on one pipe, and what they carry.

A frame is ``b"fp"``, one kind byte, the payload length as an unsigned 64-bit
little-endian integer, then the payload. A child sends any number of ``PROGRESS``
frames, then at most one outcome frame (``RESULT`` or ``RAISED``), always last.

The parent parses incrementally (:class:`FrameReader`) as bytes arrive, so a child
blocked on a full pipe is always drained. Any byte sequence in gives frames or a
:class:`FrameError` out; memory grows with the bytes actually received, never with a
length the header merely claims.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import pickle
import struct
import traceback
from typing import Final

import attrs
import cloudpickle

from forkpool._errors import RemoteTaskError, RemoteTraceback, ResultNotPicklableError

MAGIC: Final = b"fp"
HEADER: Final = struct.Struct("<2sBQ")

# Payloads up to this size are allocated at once when their header arrives; larger
# ones grow by doubling as their bytes arrive (a corrupt header cannot make us
# allocate what was never sent).
_PREALLOCATE_LIMIT: Final = 64 << 20
_READ_CHUNK: Final = 1 << 20
# Linux lets an unprivileged process raise a pipe to /proc/sys/fs/pipe-max-size
# (1 MiB by default); fewer, larger writes and reads move big results faster.
_BIG_PIPE: Final = 1 << 20


class Kind(enum.IntEnum):
    """What a frame carries."""

    RESULT = 1
    RAISED = 2
    PROGRESS = 3


class FrameError(Exception):
    """The byte stream from a child is not a valid sequence of frames."""


@attrs.frozen
class Frame:
    """One complete message from a child."""

    kind: Kind
    payload: bytes | bytearray


def write_frame(fd: int, kind: Kind, payload: bytes) -> None:
    """Write one frame to a blocking pipe, completing partial writes."""
    header = HEADER.pack(MAGIC, kind, len(payload))
    if len(payload) <= 1 << 16:
        _write_all(fd, header + payload)
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _BIG_PIPE)
    _write_all(fd, header)
    _write_all(fd, payload)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Parses frames from a non-blocking pipe as bytes arrive.

    Attributes:
        eof: The writer closed its end.
    """

    def __init__(self) -> None:
        self.eof = False
        self._header = bytearray()
        self._kind: Kind | None = None
        self._length = 0
        self._payload = bytearray()
        self._filled = 0

    @property
    def mid_frame(self) -> bool:
        """Bytes of an unfinished frame have been received."""
        return bool(self._header) or self._kind is not None

    def read(self, fd: int) -> list[Frame]:
        """Read all that is available now; return the frames it completed.

        Raises:
            FrameError: The stream is corrupt.
        """
        frames: list[Frame] = []
        while not self.eof:
            try:
                if self._kind is not None and self._length - self._filled > _READ_CHUNK // 4:
                    got = self._read_into_payload(fd)
                    if got:
                        self._finish_payload_if_full(frames)
                    continue
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                self.eof = True
                break
            frames.extend(self.feed(data))
        return frames

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Parse bytes already read; return the frames they completed.

        Raises:
            FrameError: The stream is corrupt.
        """
        frames: list[Frame] = []
        view = memoryview(data)
        while view:
            if self._kind is None:
                take = HEADER.size - len(self._header)
                self._header += view[:take]
                view = view[take:]
                if len(self._header) == HEADER.size:
                    self._start_payload()
                    self._finish_payload_if_full(frames)
                continue
            take = min(len(view), self._length - self._filled)
            self._reserve(self._filled + take)
            self._payload[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            self._finish_payload_if_full(frames)
        return frames

    def _start_payload(self) -> None:
        magic, kind, length = HEADER.unpack(self._header)
        if magic != MAGIC:
            msg = f"bad frame magic {bytes(magic)!r}"
            raise FrameError(msg)
        try:
            self._kind = Kind(kind)
        except ValueError:
            msg = f"unknown frame kind {kind}"
            raise FrameError(msg) from None
        self._header.clear()
        self._length = length
        self._filled = 0
        self._payload = bytearray(min(length, _PREALLOCATE_LIMIT))

    def _reserve(self, needed: int) -> None:
        if needed <= len(self._payload):
            return
        capacity = min(self._length, max(needed, 2 * len(self._payload)))
        grown = bytearray(capacity)
        grown[: self._filled] = memoryview(self._payload)[: self._filled]
        self._payload = grown

    def _read_into_payload(self, fd: int) -> int:
        self._reserve(min(self._length, self._filled + _READ_CHUNK))
        with memoryview(self._payload) as view:
            got = os.readv(fd, [view[self._filled :]])
        if got == 0:
            self.eof = True
        self._filled += got
        return got

    def _finish_payload_if_full(self, frames: list[Frame]) -> None:
        if self._kind is None or self._filled < self._length:
            return
        payload = self._payload
        if len(payload) != self._length:
            del payload[self._length :]
        frames.append(Frame(self._kind, payload))
        self._kind = None
        self._payload = bytearray()
        self._filled = self._length = 0


# --- what the frames carry -------------------------------------------------------


def dumps(obj: object) -> bytes:
    """Pickle with plain pickle, falling back to cloudpickle.

    Plain pickle first: it sends classes by reference, so an instance of a class
    defined in ``__main__`` comes back as that same class (``except MyError`` works).
    cloudpickle catches what pickle cannot (lambdas, local classes).
    """
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - any failure means "try the stronger pickler"
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]


def encode_result(value: object) -> tuple[Kind, bytes]:
    """Return the frame that sends ``value`` back, or the error saying it could not."""
    try:
        return Kind.RESULT, dumps(value)
    except Exception as exc:  # noqa: BLE001 - report every pickling failure the same way
        error = ResultNotPicklableError(
            f"the task's result of type {_qualname(type(value))} could not be pickled: "
            f"{type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return Kind.RAISED, encode_exception(error)


def encode_exception(exc: BaseException) -> bytes:
    """Serialize a task's exception so that the parent can always rebuild one.

    The exception is round-tripped here, in the child: some exceptions pickle but
    fail to unpickle (an ``__init__`` with required arguments, say). Failing that,
    the parent rebuilds an instance of the same class without calling ``__init__``
    (from its args and attributes, then from its message alone), and failing even
    that it raises :class:`RemoteTaskError` with the type name, message and
    traceback text.
    """
    traceback_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    type_name = _qualname(type(exc))
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the outcome
        message = f"<unprintable {type_name}>"
    cls = type(exc)
    candidates: tuple[object, ...] = (
        exc,
        (_REBUILD, cls, exc.args, getattr(exc, "__dict__", {})),
        (_REBUILD, cls, (message,), {}),
    )
    pickled: bytes | None = None
    for candidate in candidates:
        try:
            data = dumps(candidate)
            _load_exception(data)
        except Exception:  # noqa: BLE001, S112 - try the next, simpler form
            continue
        pickled = data
        break
    return pickle.dumps((pickled, type_name, message, traceback_text), pickle.HIGHEST_PROTOCOL)


# Marks a recipe for an exception that must be rebuilt without calling __init__.
_REBUILD: Final = "forkpool.rebuild-exception"


def _load_exception(data: bytes) -> BaseException:
    loaded = pickle.loads(data)  # noqa: S301 - bytes from our own child
    if isinstance(loaded, BaseException):
        return loaded
    marker, cls, args, state = loaded
    if marker != _REBUILD or not (isinstance(cls, type) and issubclass(cls, BaseException)):
        msg = f"not an exception recipe: {loaded!r:.100}"
        raise TypeError(msg)
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def decode_result(payload: bytes | bytearray) -> object:
    """Rebuild a task's return value.

    Raises:
        ResultNotPicklableError: The value does not unpickle in the parent.
    """
    try:
        return pickle.loads(payload)  # noqa: S301 - bytes from our own child
    except Exception as exc:
        msg = f"the task's result could not be unpickled in the parent: {type(exc).__name__}: {exc}"
        raise ResultNotPicklableError(msg) from exc


def decode_exception(payload: bytes | bytearray) -> BaseException:
    """Rebuild a task's exception, with the child's traceback as ``__cause__``."""
    pickled, type_name, message, traceback_text = pickle.loads(payload)  # noqa: S301
    exc: BaseException | None = None
    if pickled is not None:
        try:
            exc = _load_exception(pickled)
        except Exception:  # noqa: BLE001 - degrade to the stand-in below
            exc = None
    if exc is None:
        exc = RemoteTaskError(type_name, message, traceback_text)
    exc.__cause__ = RemoteTraceback(traceback_text)
    return exc


def _qualname(cls: type) -> str:
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in (None, "builtins") else f"{module}.{name}"
