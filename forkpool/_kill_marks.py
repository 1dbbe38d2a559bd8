"""Word that ``kill_all`` leaves for a child's owner: who sent the SIGKILL.

``kill_all`` may run in another process (``forkpool kill-all``). The owner, seeing
its child die of SIGKILL with no word, could only guess at the OOM killer. So
before it signals a child whose parent is alive, ``kill_all`` writes a small file,
named after the task id, in a directory of this user's on a memory file system --
the owner is on this host, since nothing else can kill its children -- and the
owner reads and removes it when it settles that child's future. The owner never
waits for it: a missing file only means nobody left word.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Final

# Task ids are ours (hex); anything else, read from Redis, is never a file name.
_TASK_ID: Final = re.compile(r"[0-9a-f]{1,64}")
_MESSAGE_MAX: Final = 200


def leave(task_id: str, stopped_by: str) -> bool:
    """Tell ``task_id``'s owner who is about to stop it; False if that cannot be done."""
    directory = _directory(create=True)
    if directory is None or not _TASK_ID.fullmatch(task_id):
        return False
    try:
        (directory / task_id).write_text(stopped_by[:_MESSAGE_MAX])
    except OSError:
        return False
    return True


def take(task_id: str) -> str:
    """Who stopped ``task_id``, if word was left (and remove it); else empty."""
    directory = _directory(create=False)
    if directory is None or not _TASK_ID.fullmatch(task_id):
        return ""
    path = directory / task_id
    try:
        with path.open() as file:
            text = file.read(_MESSAGE_MAX)
    except OSError:
        return ""
    with contextlib.suppress(OSError):
        path.unlink()
    return text


def withdraw(task_id: str) -> None:
    """Remove word left for a child that turned out not to need stopping."""
    directory = _directory(create=False)
    if directory is not None and _TASK_ID.fullmatch(task_id):
        with contextlib.suppress(OSError):
            (directory / task_id).unlink()


def _directory(*, create: bool) -> Path | None:
    """This user's directory for the marks, if it is safely ours."""
    shm = Path("/dev/shm")  # noqa: S108 - a private directory under it, checked below
    base = shm if shm.is_dir() else Path(tempfile.gettempdir())
    directory = base / f"forkpool-{os.getuid()}"
    if create:
        with contextlib.suppress(OSError):
            directory.mkdir(mode=0o700)
    try:
        info = directory.lstat()
    except OSError:
        return None
    # A directory someone else made (or a symlink) under a shared /dev/shm is not used.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return directory
