"""The child-to-parent wire: length-prefixed frames on one pipe, and what they carry.

A frame is ``b"fp"``, one kind byte, the payload length as an unsigned 64-bit
little-endian integer, then the payload. A child sends any number of ``PROGRESS``
frames, then its outcome: one ``DONE`` frame, zero or more ``BUFFER`` (or one
``BYTEARRAY``) frames and one ``RESULT`` frame, or ``DONE`` and one ``RAISED``
frame. The outcome is always last.

``DONE`` carries the moment (``CLOCK_MONOTONIC``, which every process on the machine
shares) the task finished and its outcome was ready to send. The parent judges a
timeout by it, not by when it got round to reading: a parent busy elsewhere, or
stopped altogether, must not turn a task that finished in time into a timeout.

A result is a protocol-5 pickle. Large contiguous buffers in it (a top-level
``bytes`` or ``bytearray``, a numpy array at any depth) travel out of band, so that
moving one costs a single copy, the reader's:

* the child hands the buffer's pages to the pipe with vmsplice(2) instead of
  copying them in (plain writes if the kernel refuses);
* the parent reads a ``BUFFER`` into private anonymous memory of the exact size,
  advised to use transparent huge pages, which the unpickled object (a numpy
  array, say) keeps as its own; a ``BYTEARRAY`` (the result itself is one) grows
  a ``bytearray`` in place;
* the pickle itself stays small.

The parent parses incrementally (:class:`FrameReader`) as bytes arrive, so a child
blocked on a full pipe is always drained. Any byte sequence in gives frames or a
:class:`FrameError` out; memory grows with the bytes actually received, never with a
length the header merely claims.
"""

from __future__ import annotations

import enum
import fcntl
import mmap
import os
import pickle
import struct
import traceback
from typing import TYPE_CHECKING, Any, Final, cast

import attrs
import cloudpickle

from forkpool._errors import RemoteTaskError, RemoteTraceback, ResultNotPicklableError
from forkpool._linux import splice_to_pipe

if TYPE_CHECKING:
    from collections.abc import Callable

MAGIC: Final = b"fp"
HEADER: Final = struct.Struct("<2sBQ")

# A first read takes what a default pipe holds: a small outcome arrives whole in it.
_FIRST_READ: Final = 1 << 16
SCRATCH_SIZE: Final = _FIRST_READ
# Reads of a large payload in progress (the size we raise the pipe to).
_READ_CHUNK: Final = 1 << 20
# Linux lets an unprivileged process raise a pipe to /proc/sys/fs/pipe-max-size
# (1 MiB by default); fewer, larger writes and reads move big results faster.
_BIG_PIPE: Final = 1 << 20
# Buffers at least this large travel out of band; smaller ones stay in the pickle.
OUT_OF_BAND_MIN: Final = 1 << 16
# Payloads at least this large are spliced rather than written.
_SPLICE_MIN: Final = 1 << 20
# BUFFER payloads at least this large are read into their own mapping (huge pages
# need 2 MiB); smaller ones into a bytearray.
_MAPPED_MIN: Final = 2 << 20
_MADV_HUGEPAGE: Final = getattr(mmap, "MADV_HUGEPAGE", None)


class Kind(enum.IntEnum):
    """What a frame carries."""

    RESULT = 1
    RAISED = 2
    PROGRESS = 3
    BUFFER = 4
    BYTEARRAY = 5
    DONE = 6
    SPANS = 7  # finished trace spans of the task, for the parent's exporter (forkpool.otel)


# Kind(byte) goes through EnumMeta.__call__; a dict lookup is what the hot path needs.
_KINDS: Final = {int(kind): kind for kind in Kind}
# Frames carrying an out-of-band buffer; their payload arrives writable, since it
# becomes an object's memory.
BUFFER_KINDS: Final = frozenset({Kind.BUFFER, Kind.BYTEARRAY})


# The payload of a DONE frame: when the task finished, in time.monotonic() seconds,
# and the child's resident set in bytes just before the task began (-1: unknown).
DONE_STAMP: Final = struct.Struct("<dq")


class FrameError(Exception):
    """The byte stream from a child is not a valid sequence of frames."""


@attrs.define
class Frame:
    """One complete message from a child."""

    kind: Kind
    payload: bytes | bytearray | mmap.mmap


def write_frame(fd: int, kind: Kind, payload: bytes | memoryview, before: bytes = b"") -> None:
    """Write one frame to a blocking pipe, completing partial writes.

    ``before`` (whole frames) goes out in the same first write, so that a small
    outcome and its DONE frame wake the reader once.

    A large payload is spliced: it must not change until the reader has it, which
    holds for a child's outcome (the child exits next).
    """
    view = memoryview(payload).cast("B")
    size = view.nbytes
    header = before + HEADER.pack(MAGIC, kind, size)
    if size <= _FIRST_READ:
        _write_all(fd, header + view)
        return
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _BIG_PIPE)
    except OSError:
        pass  # a smaller pipe only means more writes
    _write_all(fd, header)
    if size >= _SPLICE_MIN:
        view = view[splice_to_pipe(fd, view) :]
    _write_all(fd, view)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Parses frames from a non-blocking pipe as bytes arrive.

    Attributes:
        eof: The writer closed its end.
    """

    __slots__ = ("_filled", "_header", "_kind", "_length", "_payload", "eof")

    def __init__(self) -> None:
        self.eof = False
        self._header = b""
        self._kind: Kind | None = None
        self._length = 0
        self._payload: bytearray | mmap.mmap = bytearray()
        self._filled = 0

    @property
    def mid_frame(self) -> bool:
        """Bytes of an unfinished frame have been received."""
        return bool(self._header) or self._kind is not None

    def read(self, fd: int, scratch: bytearray | None = None) -> list[Frame]:
        """Read once from ``fd``; return the frames that completed.

        One ``read`` per call: with a level-triggered poller the caller is woken
        again while bytes remain. Small reads land in ``scratch`` (a reusable
        buffer of at least 64 KiB) if given, rather than in a new allocation.

        Raises:
            BlockingIOError: Nothing was available.
            FrameError: The stream is corrupt.
        """
        if self._kind is not None and self._length - self._filled > _FIRST_READ:
            return self._read_large(fd)
        data: bytes | memoryview
        if scratch is None:
            data = os.read(fd, _FIRST_READ)
        else:
            data = memoryview(scratch)[: os.readv(fd, (scratch,))]
        if not data:
            self.eof = True
            return []
        return self.feed(data)

    def _read_large(self, fd: int) -> list[Frame]:
        payload = self._payload
        if type(payload) is mmap.mmap:
            # Straight into the payload's own memory: the only copy of it.
            with memoryview(payload) as view:
                got = os.readv(fd, (view[self._filled :],))
        else:
            # A bytearray grows in place (realloc moves pages, not bytes) and is
            # only ever as large as what has arrived.
            chunk = os.read(fd, min(self._length - self._filled, _READ_CHUNK))
            payload += chunk  # type: ignore[operator]  # a bytearray here
            got = len(chunk)
        if not got:
            self.eof = True
            return []
        self._filled += got
        return self._finish() if self._filled == self._length else []

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Parse bytes already read; return the frames they completed.

        Raises:
            FrameError: The stream is corrupt.
        """
        frames: list[Frame] = []
        if self._header:
            data = self._header + bytes(data)
            self._header = b""
        view = memoryview(data)
        end = len(view)
        at = 0
        while at < end:
            kind = self._kind
            if kind is None:
                if end - at < HEADER.size:
                    self._header = bytes(view[at:])
                    break
                kind = self._start(view, at)
                at += HEADER.size
                if end - at >= self._length and kind not in BUFFER_KINDS:
                    # The common case: a whole small frame in this read.
                    frames.append(Frame(kind, bytes(view[at : at + self._length])))
                    at += self._length
                    continue
                self._begin_payload(kind)
            take = min(end - at, self._length - self._filled)
            payload = self._payload
            if type(payload) is bytearray:
                payload += view[at : at + take]
            else:
                payload[self._filled : self._filled + take] = view[at : at + take]
            self._filled += take
            at += take
            if self._filled == self._length:
                frames.extend(self._finish())
        return frames

    def _start(self, view: memoryview, at: int) -> Kind:
        magic, kind_byte, self._length = HEADER.unpack_from(view, at)
        if magic != MAGIC:
            msg = f"bad frame magic {bytes(magic)!r}"
            raise FrameError(msg)
        kind = _KINDS.get(kind_byte)
        if kind is None:
            msg = f"unknown frame kind {kind_byte}"
            raise FrameError(msg)
        return kind

    def _begin_payload(self, kind: Kind) -> None:
        self._kind = kind
        self._filled = 0
        if kind is Kind.BUFFER and self._length >= _MAPPED_MIN:
            # Reserved, not allocated: pages appear as bytes arrive. A length no
            # mapping can hold fails here, as a corrupt stream.
            try:
                self._payload = mmap.mmap(-1, self._length, flags=mmap.MAP_PRIVATE)
            except (OSError, OverflowError, ValueError) as exc:
                msg = f"a buffer of {self._length} bytes cannot be received: {exc}"
                raise FrameError(msg) from exc
            if _MADV_HUGEPAGE is not None:
                try:
                    self._payload.madvise(_MADV_HUGEPAGE)
                except OSError:
                    pass  # small pages, then
        else:
            self._payload = bytearray()

    def _finish(self) -> list[Frame]:
        frame = Frame(cast("Kind", self._kind), self._payload)
        self._kind = None
        self._payload = bytearray()
        self._filled = 0
        return [frame]


# --- what the frames carry -------------------------------------------------------


def dumps(obj: object, buffers: list[memoryview] | None = None) -> bytes:
    """Pickle with plain pickle, falling back to cloudpickle.

    Plain pickle first: it sends classes by reference, so an instance of a class
    defined in ``__main__`` comes back as that same class (``except MyError`` works).
    cloudpickle catches what pickle cannot (lambdas, local classes).

    With ``buffers``, large contiguous buffers are left out of the pickle and
    appended to it instead (see the module docstring).
    """
    if buffers is None:
        return _dumps(obj, None, [])
    # Every PickleBuffer out of band through a C callback (no Python call per
    # buffer, nothing at all for the many results without one); then, in the rare
    # case that this caught a small or non-contiguous buffer, pickle again sorting
    # them one by one.
    found: list[pickle.PickleBuffer] = []
    data = _dumps(obj, found.append, found)
    if not found:
        return data
    keep = _OutOfBand(buffers)
    if all(keep.takes(buffer) for buffer in found):
        buffers.extend(buffer.raw() for buffer in found)
        return data
    return _dumps(obj, keep, buffers)


def _dumps(
    obj: object,
    callback: Callable[[pickle.PickleBuffer], object] | None,
    collected: list[Any],
) -> bytes:
    try:
        return pickle.dumps(obj, protocol=5, buffer_callback=callback)
    except Exception:  # noqa: BLE001 - any failure means "try the stronger pickler"
        collected.clear()  # what the failed attempt set aside
        return cloudpickle.dumps(obj, protocol=5, buffer_callback=callback)  # type: ignore[no-any-return]


@attrs.define
class _OutOfBand:
    """A pickle buffer_callback: keep large contiguous buffers out of the pickle."""

    buffers: list[memoryview]

    @staticmethod
    def takes(buffer: pickle.PickleBuffer) -> bool:
        """The buffer is contiguous and large enough to travel out of band."""
        try:
            raw = buffer.raw()
        except BufferError:
            return False
        return raw.nbytes >= OUT_OF_BAND_MIN

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        if not self.takes(buffer):
            return True  # in the pickle
        self.buffers.append(buffer.raw())
        return False


class _BytesOutOfBand:
    """Pickles a ``bytes`` object as an out-of-band buffer rebuilt with ``bytes()``."""

    __slots__ = ("value",)

    def __init__(self, value: bytes) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: object) -> tuple[type[bytes], tuple[pickle.PickleBuffer]]:
        return bytes, (pickle.PickleBuffer(self.value),)


@attrs.define
class Outcome:
    """What a child sends last: out-of-band buffers, then one frame."""

    kind: Kind
    payload: bytes
    buffers: list[memoryview] = attrs.Factory(list)
    buffer_kind: Kind = Kind.BUFFER


def encode_result(value: object) -> Outcome:
    """Return what sends ``value`` back, or the error saying it could not."""
    # pickle writes a bytes or bytearray in band, whatever its size. At the top
    # level (the common "return a big blob" case) we wrap it to travel out of band.
    top: object = value
    buffer_kind = Kind.BUFFER
    if type(value) is bytearray and len(value) >= OUT_OF_BAND_MIN:
        top = pickle.PickleBuffer(value)  # unpickles as the very buffer we read into
        buffer_kind = Kind.BYTEARRAY
    elif type(value) is bytes and len(value) >= OUT_OF_BAND_MIN:
        top = _BytesOutOfBand(value)
    buffers: list[memoryview] = []
    try:
        return Outcome(Kind.RESULT, dumps(top, buffers), buffers, buffer_kind)
    except BaseException as exc:  # noqa: BLE001 - a __reduce__ raising SystemExit fails the same way
        error = ResultNotPicklableError(
            f"the task's result of type {_qualname(type(value))} could not be pickled: "
            f"{type(exc).__name__}: {exc}"
        )
        error.__cause__ = exc
        return Outcome(Kind.RAISED, encode_exception(error))


def send_outcome(fd: int, outcome: Outcome, finished_at: float, resident_at_start: int) -> None:
    """Write an outcome: DONE, each out-of-band buffer straight from its memory, the frame."""
    stamp = DONE_STAMP.pack(finished_at, resident_at_start)
    done = HEADER.pack(MAGIC, Kind.DONE, DONE_STAMP.size) + stamp
    for buffer in outcome.buffers:
        write_frame(fd, outcome.buffer_kind, buffer, done)
        done = b""
    write_frame(fd, outcome.kind, outcome.payload, done)


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
    except BaseException:  # noqa: BLE001 - a broken __str__ must not lose the outcome
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
        except BaseException:  # noqa: BLE001, S112 - even SystemExit: try the next, simpler form
            continue
        pickled = data
        break
    return pickle.dumps((pickled, type_name, message, traceback_text), protocol=5)


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


def decode_result(
    payload: bytes | bytearray | mmap.mmap, buffers: list[bytearray | mmap.mmap] | None = None
) -> object:
    """Rebuild a task's return value from its pickle and out-of-band buffers.

    Raises:
        ResultNotPicklableError: The value does not unpickle in the parent.
    """
    try:
        return pickle.loads(payload, buffers=buffers or ())  # noqa: S301 - bytes from our own child
    except BaseException as exc:
        msg = f"the task's result could not be unpickled in the parent: {type(exc).__name__}: {exc}"
        raise ResultNotPicklableError(msg) from exc


def decode_exception(payload: bytes | bytearray) -> BaseException:
    """Rebuild a task's exception, with the child's traceback as ``__cause__``."""
    pickled, type_name, message, traceback_text = pickle.loads(payload)  # noqa: S301
    exc: BaseException | None = None
    if pickled is not None:
        try:
            exc = _load_exception(pickled)
        except BaseException:  # noqa: BLE001 - whatever it raises, degrade to the stand-in below
            exc = None
    if exc is None:
        exc = RemoteTaskError(type_name, message, traceback_text)
    exc.__cause__ = RemoteTraceback(traceback_text)
    return exc


def _qualname(cls: type) -> str:
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in (None, "builtins") else f"{module}.{name}"
