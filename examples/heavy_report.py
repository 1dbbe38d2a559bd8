"""The Ruby gem's HeavyReportJob, in Python: hooks around a database connection.

A connection must not be shared across fork: the parent releases its own before
each fork, and every child opens a fresh one. Per-callable options play the part
of the gem's ``fork_timeout``. Run it with ``python examples/heavy_report.py``.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import forkpool
from forkpool import ForkPerTaskExecutor

DB_PATH = Path(tempfile.mkdtemp()) / "reports.db"


class Database:
    """One connection per process, opened lazily."""

    connection: sqlite3.Connection | None = None

    @classmethod
    def get(cls) -> sqlite3.Connection:
        if cls.connection is None:
            # The parent hooks run in the executor's supervisor thread, so the
            # parent's connection is closed from a thread other than its creator's.
            cls.connection = sqlite3.connect(DB_PATH, check_same_thread=False)
        return cls.connection

    @classmethod
    def release(cls) -> None:
        if cls.connection is not None:
            cls.connection.close()
            cls.connection = None


def release_connection(fn: object, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    """parent_pre_fork: never let a child inherit an open connection."""
    Database.release()


def reconnect(fn: object, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
    """child_post_fork: the child opens its own connection before the task runs."""
    Database.release()  # drop the inherited handle, if any, without using it
    Database.get()


@forkpool.options(timeout=60, memory_limit=512 << 20)  # per-callable, like fork_timeout
def heavy_report(account_id: int) -> str:
    """Aggregate an account's orders; the memory it takes is freed when the child exits."""
    rows = (
        Database.get()
        .execute("SELECT amount FROM orders WHERE account_id = ?", (account_id,))
        .fetchall()
    )
    amounts = sorted(amount for (amount,) in rows)  # pretend this is big
    return f"account {account_id}: {len(amounts)} orders, total {sum(amounts)}"


def main() -> None:
    db = Database.get()
    db.execute("CREATE TABLE orders (account_id INTEGER, amount INTEGER)")
    db.executemany(
        "INSERT INTO orders VALUES (?, ?)",
        [(account, amount) for account in range(1, 4) for amount in range(1, 1001)],
    )
    db.commit()
    with ForkPerTaskExecutor(
        max_workers=2, parent_pre_fork=release_connection, child_post_fork=reconnect
    ) as ex:
        for report in ex.map(heavy_report, [1, 2, 3]):
            print(report)
    print(
        "parent can still query:", Database.get().execute("SELECT COUNT(*) FROM orders").fetchone()
    )


if __name__ == "__main__":
    main()
