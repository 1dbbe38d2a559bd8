"""Immortal objects: a mold's children stop copying pages just to count references.

Facts this module is built on:

* Every CPython object keeps its reference count in its own header, and taking or
  dropping a reference writes it. After a fork every page is shared copy-on-write,
  so a child that merely *uses* an object it inherited (calls a function, reads a
  constant, looks up a module) copies the page that object lives on. In a mold's
  child most page faults are these, and the mold itself pays them again after
  each fork for every object its own loop touches.
* Since Python 3.12 (PEP 683) the interpreter skips those writes for *immortal*
  objects, recognised by their count alone. A mold marks every object it holds
  immortal once, just before it starts serving: its children then copy only the
  pages they really change.
* The mark is the count itself, in the low 32 bits of ``ob_refcnt`` on 64-bit
  CPython with the GIL: a decrement is skipped when they read as a negative int32.
  Python 3.12 and 3.13 skip an increment only at all ones, so that is the count
  set there. From 3.14 on an increment is skipped at ``3 << 30`` and above, and a
  count below it climbs back, one write at a time: a reference the interpreter
  took while the object was still mortal is dropped without the check, so the
  count set is ``3 << 30`` plus a margin (``1 << 28``) that such drops do not use up.
  Elsewhere (3.11, free-threaded builds, 32-bit, other implementations) nothing is
  marked: the mold works as before, with more faults.
* What it costs: the mold writes each object's header once, so the pages holding
  headers become the mold's own (measured: 4 MiB more PSS for a mold of a program
  that imports forkpool only, 9 MiB for one that also holds Celery). An immortal
  object is never freed, nor finalized: not in the mold, not in a child. A task
  that drops the last reference to an object the mold held keeps it (shared, so
  this costs nothing), and no ``__del__`` or weakref callback runs for it. A child
  exits through ``os._exit``, which runs none anyway.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import sysconfig
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable


# The layout described above is the 64-bit one.
_POINTER_BYTES: Final = 8


def _immortal_count() -> int | None:
    """The count that marks an object immortal here, or None where none can be set."""
    version = sys.version_info[:2]  # a value: type checkers would fold a direct check
    if (
        sys.implementation.name != "cpython"
        or version < (3, 12)
        or sysconfig.get_config_var("Py_GIL_DISABLED")
        or ctypes.sizeof(ctypes.c_void_p) != _POINTER_BYTES
    ):
        return None
    return 0xFFFF_FFFF if version < (3, 14) else (3 << 30) + (1 << 28)


IMMORTAL_COUNT: Final = _immortal_count()
# A count at or above this (as an unsigned 32-bit value) is immortal already.
_IMMORTAL_FLOOR: Final = 1 << 31


def supported() -> bool:
    """Objects can be made immortal in this interpreter."""
    return IMMORTAL_COUNT is not None


def is_immortal(obj: object) -> bool:
    """``obj``'s count marks it immortal (False where there are no immortal objects)."""
    if IMMORTAL_COUNT is None:
        return False
    return bool(ctypes.c_uint32.from_address(id(obj)).value >= _IMMORTAL_FLOOR)


def make_everything_immortal(roots: Iterable[object] = ()) -> int:
    """Mark every object this process can reach immortal; how many were marked.

    Reached: every object the garbage collector tracks, ``roots`` (what only a
    running frame holds), and, through them, the objects it does not track
    (strings, numbers, bytes, tuples of those). Objects already immortal are left
    as they are. Objects frozen by ``gc.freeze()`` are unfrozen to be reached: the
    caller freezes again. For a process about to serve forks for good: see the
    module docstring for what it costs.
    """
    count = IMMORTAL_COUNT
    if count is None:
        return 0
    header = ctypes.c_uint32
    # gc.get_objects() leaves out what is frozen (a prefork program's gc.freeze(),
    # inherited by a forked mold).
    gc.unfreeze()
    pending = gc.get_objects()
    pending.extend(roots)
    seen: set[int] = set()
    marked = 0
    while pending:
        obj = pending.pop()
        address = id(obj)
        if address in seen:
            continue
        seen.add(address)
        refcount = header.from_address(address)
        if refcount.value < _IMMORTAL_FLOOR:
            refcount.value = count
            marked += 1
        # The collector's own list has every tracked object: from a tracked one,
        # follow only what it does not track.
        if not gc.is_tracked(obj):
            pending.extend(gc.get_referents(obj))
            continue
        for referent in gc.get_referents(obj):
            if not gc.is_tracked(referent):
                pending.append(referent)
    return marked
