"""The chaos soak: thousands of misbehaving tasks, Redis dying, a sibling executor killed.

Run it with ``nox -s soak`` (3,000 tasks) or ``python tests/soak.py --tasks 300``.
It checks that every future resolved to exactly what its task did, that no process
and no Redis entry is left behind, and prints one summary table. Exit status 1 if
any check failed.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import faulthandler
import json
import os
import random
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import redis
from helpers import OwnServer, is_running, live_children, reap_zombies

import forkpool
from forkpool import ChildDiedError, ForkPerTaskExecutor, ResultNotPicklableError, TaskTimeoutError
from forkpool._entry import Keys

PREFIX = "soak"
HOST = "soak-host"
TIMEOUT = 0.3
PR_SET_CHILD_SUBREAPER = 36


class Boom(Exception):
    """What a failing task raises."""


# --- the tasks: each returns or fails in one known way ----------------------------------


def ok(n: int) -> int:
    return n * 2


def fail(n: int) -> None:
    raise Boom(f"task {n} failed")


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(10)


def segfault() -> None:
    faulthandler.disable()  # a deliberate crash: no fatal-error report in the soak's output
    ctypes.string_at(0)


def overrun() -> None:
    time.sleep(30)


def big(n: int) -> bytes:
    return bytes([n % 256]) * ((8 + n % 24) << 20)


def unpicklable() -> threading.Lock:
    return threading.Lock()


def chatty(n: int) -> int:
    for i in range(n):
        forkpool.report_progress(i)
    return n


KINDS = [
    "ok",
    "exception",
    "exit",
    "sigkill",
    "sigsegv",
    "timeout",
    "big",
    "unpicklable",
    "progress",
]
WEIGHTS = [40, 12, 8, 6, 4, 3, 5, 4, 18]


def make_task(  # noqa: PLR0911 - one return per kind of task
    kind: str, n: int, rng: random.Random
) -> tuple[Any, tuple[Any, ...], Any]:
    """(callable, args, expected outcome) for one task of ``kind``."""
    if kind == "ok":
        return ok, (n,), ("result", n * 2)
    if kind == "exception":
        return fail, (n,), ("raises", Boom, f"task {n} failed")
    if kind == "exit":
        code = rng.randrange(0, 256)
        return exit_with, (code,), ("died", code, None)
    if kind == "sigkill":
        return kill_self, (signal.SIGKILL,), ("died", None, signal.SIGKILL)
    if kind == "sigsegv":
        return segfault, (), ("died", None, signal.SIGSEGV)
    if kind == "timeout":
        return forkpool.options(timeout=TIMEOUT, kill_grace=0.2)(overrun), (), ("timeout",)
    if kind == "big":
        return big, (n,), ("big", n)
    if kind == "unpicklable":
        return unpicklable, (), ("unpicklable",)
    count = rng.randrange(1, 200)
    return chatty, (count,), ("progress", count)


def check(future: Any, expected: tuple[Any, ...], progress: list[Any]) -> str | None:  # noqa: PLR0911
    """None if the future ended as expected, else what went wrong."""
    what = expected[0]
    error = future.exception()
    if what == "result":
        return None if error is None and future.result() == expected[1] else f"got {error!r}"
    if what == "big":
        n = expected[1]
        if error is not None:
            return f"got {error!r}"
        data = future.result()
        size = (8 + n % 24) << 20
        good = len(data) == size and data[:1] == data[-1:] == bytes([n % 256])
        return None if good else "big result corrupted"
    if what == "raises":
        good = isinstance(error, expected[1]) and str(error) == expected[2]
        return None if good else f"got {error!r}"
    if what == "died":
        good = isinstance(error, ChildDiedError) and (error.exitcode, error.signal) == expected[1:]
        return None if good else f"got {error!r}, expected exit {expected[1:]}"
    if what == "timeout":
        return None if isinstance(error, TaskTimeoutError) else f"got {error!r}"
    if what == "unpicklable":
        return None if isinstance(error, ResultNotPicklableError) else f"got {error!r}"
    count = expected[1]
    if error is not None or future.result() != count:
        return f"got {error!r}"
    return None if progress == list(range(count)) else f"progress {len(progress)}/{count}"


# --- chaos around the tasks ----------------------------------------------------------------


class RedisChaos(threading.Thread):
    """Kills the Redis server at random moments and restarts it a little later."""

    def __init__(self, server: OwnServer, rng: random.Random) -> None:
        super().__init__(name="redis-chaos", daemon=True)
        self.server, self.rng = server, rng
        self.stop = threading.Event()
        self.kills = 0

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(0.5, 2.0)):
            self.server.kill()
            self.kills += 1
            self.stop.wait(self.rng.uniform(0.1, 0.5))
            self.server.start()


SIBLING = textwrap.dedent(
    """
    import ctypes, os, subprocess, sys, time
    import forkpool

    def orphan_maker():
        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # survive the parent, as a stuck child would
        subprocess.Popen(["sleep", "120"])
        time.sleep(120)

    ex = forkpool.ForkPerTaskExecutor(
        3, redis=sys.argv[1], key_prefix=sys.argv[2], host=sys.argv[3],
        reap_interval=0.5, ttl=5,
    )
    futures = [ex.submit(orphan_maker) for _ in range(3)]
    while len([f for f in futures if f.pid]) < 3:
        time.sleep(0.05)
    time.sleep(1.5)  # let the bookkeeping write the entries
    print(" ".join(str(f.pid) for f in futures), flush=True)
    time.sleep(120)
    """
)


def orphans_of(pids: list[int]) -> list[int]:
    """The given children plus the processes in their process groups."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in pids:
            found.append(int(entry.name))
    return found


def tracked_children_of(url: str, parent: int) -> set[int]:
    """Pids recorded in Redis as children of ``parent`` (empty while Redis is down)."""
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        values = client.hvals(Keys(PREFIX, HOST).meta)
    except redis.RedisError:
        return set()
    finally:
        client.close()
    entries = [json.loads(value) for value in values]
    return {entry["pid"] for entry in entries if entry["parent_pid"] == parent}


def kill_sibling(url: str) -> tuple[float, int]:
    """SIGKILL an executor whose children survive it; return (longest orphan life, count)."""
    sibling = subprocess.Popen(
        [sys.executable, "-c", SIBLING, url, PREFIX, HOST], stdout=subprocess.PIPE, text=True
    )
    assert sibling.stdout is not None
    children = [int(pid) for pid in sibling.stdout.readline().split()]
    orphans = orphans_of(children)
    # Kill it once Redis knows its children (it may be down at this instant).
    deadline = time.monotonic() + 30
    while tracked_children_of(url, sibling.pid) != set(children):
        if time.monotonic() > deadline:
            msg = "the sibling's children never appeared in Redis"
            raise RuntimeError(msg)
        time.sleep(0.1)
    sibling.kill()
    killed_at = time.monotonic()
    sibling.wait()
    sibling.stdout.close()
    longest = 0.0
    deadline = killed_at + 60
    while any(is_running(pid) for pid in orphans) and time.monotonic() < deadline:
        reap_zombies(only=orphans)
        time.sleep(0.05)
    longest = time.monotonic() - killed_at
    return longest, len(orphans)


# --- the run ----------------------------------------------------------------------------------


def main() -> int:  # noqa: C901, PLR0915 - one linear script
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible schedule, not a secret
    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    started = time.monotonic()

    server = OwnServer(persistent=True)
    server.start()
    chaos = RedisChaos(server, rng)
    try:
        kinds = rng.choices(KINDS, WEIGHTS, k=args.tasks)
        injected = collections.Counter(kinds)
        wrong: list[str] = []
        progress: dict[int, list[Any]] = collections.defaultdict(list)
        sibling_at = args.tasks // 3
        orphan_life, orphans = 0.0, 0

        with ForkPerTaskExecutor(
            args.workers, redis=server.url, key_prefix=PREFIX, host=HOST, reap_interval=0.5, ttl=5
        ) as ex:
            chaos.start()
            expected: dict[Any, tuple[int, tuple[Any, ...]]] = {}
            for n, kind in enumerate(kinds):
                fn, fn_args, outcome = make_task(kind, n, rng)
                future = ex.submit(fn, *fn_args)
                if kind == "progress":
                    future.add_progress_callback(lambda f, v, n=n: progress[n].append(v))
                expected[future] = (n, outcome)
                if n == sibling_at:
                    orphan_life, orphans = kill_sibling(server.url)
                    injected["sibling SIGKILLed"] += 1
            for future in as_completed(expected, timeout=600):
                n, outcome = expected.pop(future)
                problem = check(future, outcome, progress.pop(n, []))
                if problem:
                    wrong.append(f"task {n} ({outcome[0]}): {problem}")
            chaos.stop.set()
            chaos.join()
            if not server.answers():
                server.start()
        injected["Redis killed"] = chaos.kills

        client = redis.Redis.from_url(server.url)
        keys = Keys(PREFIX, HOST)
        leftover_entries = client.hlen(keys.meta) + client.zcard(keys.active)
        client.close()
    finally:
        chaos.stop.set()
        if chaos.is_alive():
            chaos.join()  # it may be restarting the server; let it finish first
        server.stop()
    reap_zombies()
    leftover_processes = live_children()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    elapsed = time.monotonic() - started

    rows = [
        ("tasks", str(args.tasks)),
        *((f"  injected: {kind}", str(count)) for kind, count in sorted(injected.items())),
        ("wrong outcomes", str(len(wrong))),
        ("leftover processes", str(len(leftover_processes))),
        ("leftover Redis entries", str(leftover_entries)),
        (
            f"longest orphan life after its parent's SIGKILL ({orphans} orphans)",
            f"{orphan_life:.2f}s",
        ),
        ("peak RSS of the parent", f"{peak_rss:.0f} MiB"),
        ("elapsed", f"{elapsed:.1f}s"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"forkpool soak, seed {args.seed}, {args.workers} workers")
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    for problem in wrong[:20]:
        print("  WRONG:", problem)
    for pid in leftover_processes:
        os.kill(pid, signal.SIGKILL)
    return 1 if wrong or leftover_processes or leftover_entries or orphans == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
