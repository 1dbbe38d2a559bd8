"""Thin access to Linux facilities: prctl, vmsplice and /proc.

Everything that needs ctypes is resolved here, at import, in the parent: looking up
a C symbol takes locks inside the dynamic loader, which must not happen for the
first time in a freshly forked child.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

PR_SET_PDEATHSIG: Final = 1
PR_SET_NAME: Final = 15
COMM_MAX: Final = 15  # TASK_COMM_LEN - 1

HAS_PIDFD: Final = sys.platform == "linux" and hasattr(os, "pidfd_open")


def _load_prctl() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # A private function object (indexing does not cache one on the library)
        # without argtypes: converting arguments through ctypes types touches dozens
        # of objects, and in a fresh child each touched page is a copy-on-write fault.
        # Callers pass small ints and ctypes buffers, which need no conversion.
        prctl = libc["prctl"]
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    return prctl


_prctl = _load_prctl()


def trim_heap() -> bool:
    """Give the C heap's free memory back to the OS (glibc's ``malloc_trim``).

    Returns whether it could be asked (False on a libc without it, such as musl).
    """
    try:
        malloc_trim = ctypes.CDLL(None)["malloc_trim"]
    except (OSError, AttributeError):
        return False
    malloc_trim(0)
    return True


# --- process handles: a pidfd where the kernel has them, else the bare pid ----------


def open_handle(pid: int) -> int | None:
    """A handle to ``pid`` that cannot come to name another process; None if it is gone.

    With pidfds, a handle opened before a check still names the process checked,
    even if it dies and its pid is recycled meanwhile.
    """
    if not HAS_PIDFD:
        return pid
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def send_signal(handle: int, signum: int) -> None:
    """Signal the process behind ``handle``; nothing if it is gone or not ours to signal."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if HAS_PIDFD:
            signal.pidfd_send_signal(handle, signum)
        else:
            os.kill(handle, signum)


def close_handles(handles: Iterable[int]) -> None:
    """Let go of handles from :func:`open_handle`."""
    if HAS_PIDFD:
        for handle in handles:
            with contextlib.suppress(OSError):
                os.close(handle)


def set_parent_death_signal(signum: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``signum`` when the thread that forked us exits."""
    if _prctl is None:
        return False
    return bool(_prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0)


def comm_name(name: str) -> bytes:
    """Encode a kernel-visible name for :func:`set_name` (done before forking)."""
    return name.encode("ascii", "replace")[:COMM_MAX]


def set_name(name: bytes) -> None:
    """Set this thread's kernel-visible name (``/proc/self/comm``), as prctl does.

    ctypes passes a ``bytes`` as a pointer to its own NUL-terminated storage.
    """
    if _prctl is not None and _prctl(PR_SET_NAME, name, 0, 0, 0) == 0:
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_bytes(name)


# --- vmsplice: hand a buffer's pages to a pipe instead of copying them in ----------


class _IoVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _PyBuffer(ctypes.Structure):
    """CPython's Py_buffer (stable since 3.3); only ``buf`` and ``len`` are read."""

    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


def _load_vmsplice() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if sys.platform != "linux":
        return None
    try:
        vmsplice = ctypes.CDLL(None, use_errno=True)["vmsplice"]
    except (OSError, AttributeError):
        return None
    vmsplice.argtypes = (ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_uint)
    vmsplice.restype = ctypes.c_ssize_t
    return vmsplice


_vmsplice = _load_vmsplice()
# Resolved now, in the parent (see the module docstring).
_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.argtypes = (ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.argtypes = (ctypes.POINTER(_PyBuffer),)
_release_buffer.restype = None


def splice_to_pipe(fd: int, data: memoryview) -> int:
    """Move ``data`` into the pipe ``fd`` by reference; return how many bytes went.

    vmsplice(2) puts the buffer's pages themselves into the pipe: the reader's copy
    is the only one. The caller must leave the buffer unchanged afterwards (a child
    that is about to exit does). Stops early, returning the count so far, if the
    kernel refuses; the caller writes the rest.
    """
    if _vmsplice is None:
        return 0
    view = _PyBuffer()
    try:
        _get_buffer(data, ctypes.byref(view), 0)  # PyBUF_SIMPLE: contiguous bytes only
    except BufferError:
        return 0
    try:
        iov = _IoVec()
        total, sent = view.len, 0
        while sent < total:
            iov.iov_base = view.buf + sent
            iov.iov_len = total - sent
            count = _vmsplice(fd, ctypes.byref(iov), 1, 0)
            if count <= 0:
                if count < 0 and ctypes.get_errno() == errno.EINTR:
                    continue
                break
            sent += count
        return sent
    finally:
        _release_buffer(ctypes.byref(view))


def thread_count() -> int:
    """How many threads this process has, native ones included (``/proc/self/task``)."""
    try:
        return len(os.listdir("/proc/self/task"))  # noqa: PTH208 - a count, no paths
    except OSError:
        return 0
