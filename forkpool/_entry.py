"""The Redis key layout and the metadata stored for each child.

Keys (a documented contract; the braces are literal Redis Cluster hash tags, so
one host's keys share a slot):

* ``{prefix}:{<host>}:active`` -- sorted set; member = task id, score = lease
  expiry (Unix time).
* ``{prefix}:{<host>}:meta`` -- hash; field = task id, value = :class:`TaskEntry`
  as JSON.
* ``{prefix}:hosts`` -- sorted set of host names, each scored by when its own
  announced lease lapses (Unix time): its last renewal plus its ttl.

Task arguments and results are never stored.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs


@attrs.frozen
class Keys:
    """The Redis keys of one host under one prefix."""

    prefix: str
    host: str

    @property
    def active(self) -> str:
        """Sorted set of this host's task ids, scored by lease expiry."""
        return f"{self.prefix}:{{{self.host}}}:active"

    @property
    def meta(self) -> str:
        """Hash of this host's task ids to their JSON metadata."""
        return f"{self.prefix}:{{{self.host}}}:meta"

    @property
    def hosts(self) -> str:
        """Sorted set of every host under the prefix, scored by when its lease lapses."""
        return f"{self.prefix}:hosts"

    def for_host(self, host: str) -> Keys:
        """The keys of another host under the same prefix."""
        return Keys(self.prefix, host)


class MalformedEntryError(ValueError):
    """A metadata value in Redis is not a valid task entry."""


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"expected an integer, got {value!r:.40}"
        raise MalformedEntryError(msg)
    return value


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"expected a number, got {value!r:.40}"
        raise MalformedEntryError(msg)
    return float(value)


def _optional_number(value: object) -> float | None:
    return None if value is None else _number(value)


def _str(value: object) -> str:
    if not isinstance(value, str):
        msg = f"expected a string, got {value!r:.40}"
        raise MalformedEntryError(msg)
    return value


@attrs.frozen
class TaskEntry:
    """What Redis records about one running child.

    ``pid_start`` and ``parent_start`` are start times in clock ticks from
    ``/proc/<pid>/stat``; together with ``boot_id`` and ``pidns`` they let a reaper
    tell the recorded process from a stranger that reuses its pid.
    """

    task_id: str = attrs.field(converter=_str)
    host: str = attrs.field(converter=_str)
    pid: int = attrs.field(converter=_int)
    pid_start: int = attrs.field(converter=_int)
    boot_id: str = attrs.field(converter=_str)
    pidns: str = attrs.field(converter=_str)
    pgid: int = attrs.field(converter=_int)
    parent_pid: int = attrs.field(converter=_int)
    parent_start: int = attrs.field(converter=_int)
    executor_id: str = attrs.field(converter=_str)
    name: str = attrs.field(converter=_str)
    started: float = attrs.field(converter=_number)
    deadline: float | None = attrs.field(converter=_optional_number)
    ttl: float = attrs.field(converter=_number)

    def to_json(self) -> str:
        """Serialize for the meta hash."""
        return json.dumps(attrs.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str, task_id: str) -> TaskEntry:
        """Parse a meta value, checking that it describes ``task_id``.

        Raises:
            MalformedEntryError: Not JSON, a field missing or of the wrong type.
        """
        try:
            data: Any = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            msg = f"not JSON: {exc}"
            raise MalformedEntryError(msg) from None
        if not isinstance(data, dict):
            msg = "not a JSON object"
            raise MalformedEntryError(msg)
        names = [field.name for field in attrs.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            msg = f"missing fields: {', '.join(missing)}"
            raise MalformedEntryError(msg)
        entry = cls(**{name: data[name] for name in names})
        if entry.task_id != task_id:
            msg = f"describes task {entry.task_id!r}, stored under {task_id!r}"
            raise MalformedEntryError(msg)
        return entry
