"""forkpool's benchmark suite: every contender measured side by side, in one run.

``nox -s bench`` runs it in full; ``python tests/benchmarks/bench.py --smoke`` runs a
few tasks per contender (the test suite does, so the suite cannot rot). Contenders
are interleaved round by round (A B C A B C ...) and reported as medians and
ratios: the machine is shared and noisy, so no lone absolute time means much. Every
result a contender returns is checked; a fast wrong answer is a failure.

Writes ``bench-results.json`` and ``bench-chart.png`` (with matplotlib) next to the
current directory's README unless told otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/helpers.py

import prometheus_client
import redis
from basics import bare_fork_loop, double, interleaved, run_executor
from celery_bench import measure_celery
from helpers import OwnServer

import forkpool
import forkpool.prometheus
from forkpool._demo import tree_rss

if TYPE_CHECKING:
    from collections.abc import Callable

MIB = 1 << 20


# --- contenders for task throughput -------------------------------------------------------


def process_per_task(n: int, workers: int) -> list[int]:
    """A multiprocessing.Process per task, each result through its own pipe."""
    context = multiprocessing.get_context("fork")
    results: list[int] = [0] * n
    running: list[tuple[Any, Any, int]] = []

    def work(i: int, writer: Any) -> None:
        writer.send(double(i))
        writer.close()

    submitted = 0
    while submitted < n or running:
        while submitted < n and len(running) < workers:
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(target=work, args=(submitted, writer))
            process.start()
            writer.close()
            running.append((process, reader, submitted))
            submitted += 1
        process, reader, index = running.pop(0)
        results[index] = reader.recv()
        reader.close()
        process.join()
    return results


def throughput_contenders(
    workers: int, redis_url: str, mold: forkpool.Mold
) -> dict[str, Callable[[int], list[int]]]:
    contenders: dict[str, Callable[[int], list[int]]] = {
        "bare fork loop": lambda n: bare_fork_loop(n, workers),
        "forkpool": lambda n: run_executor(forkpool.ForkPerTaskExecutor(workers), n),
        "forkpool + mold": lambda n: run_executor(
            forkpool.ForkPerTaskExecutor(workers, mold=mold), n
        ),
        "forkpool + Redis": lambda n: run_executor(
            forkpool.ForkPerTaskExecutor(workers, redis=redis_url, key_prefix="bench"), n
        ),
        "forkpool + metrics": with_metrics(
            lambda n: run_executor(forkpool.ForkPerTaskExecutor(workers, name="bench"), n)
        ),
        "multiprocessing.Process per task": lambda n: process_per_task(n, workers),
        "PPE reused workers (fork)": lambda n: run_executor(
            concurrent.futures.ProcessPoolExecutor(workers, multiprocessing.get_context("fork")),
            n,
        ),
    }
    return contenders


def with_metrics(run: Callable[[int], list[int]]) -> Callable[[int], list[int]]:
    """``run`` with forkpool's Prometheus metrics on (in a registry of its own)."""

    def measured(n: int) -> list[int]:
        forkpool.prometheus.enable(prometheus_client.CollectorRegistry())
        try:
            return run(n)
        finally:
            forkpool.prometheus.disable()

    return measured


def measure_throughput(
    tasks: int, rounds: int, workers: int, redis_url: str, mold: forkpool.Mold
) -> dict[str, float]:
    expected = [double(i) for i in range(tasks)]
    checked: dict[str, Callable[[], Any]] = {}
    for name, run in throughput_contenders(workers, redis_url, mold).items():

        def check(run: Callable[[int], list[int]] = run, name: str = name) -> None:
            if run(tasks) != expected:
                msg = f"{name} returned wrong results"
                raise AssertionError(msg)

        checked[name] = check
    times = interleaved(checked, rounds)
    return {name: tasks / statistics.median(seconds) for name, seconds in times.items()}


# --- process pools, each with a known __main__ ---------------------------------------------

POOLS = Path(__file__).resolve().parent / "pools.py"
MAIN_MODULES = ("minimal", "realistic")


def measure_pools(main: str, tasks: int, rounds: int, workers: int) -> dict[str, Any]:
    """forkpool and the process pools that start workers afresh, run by ``pools.py``.

    In a program of its own: spawn and forkserver workers import the parent's
    ``__main__``, and this one's (the bench, with Celery and redis-py) would make
    them pay for imports that are neither a minimal program's nor a typical one's.
    """
    env = {**os.environ, "FORKPOOL_BENCH_MAIN": main}
    out = subprocess.run(
        [sys.executable, str(POOLS), str(tasks), str(rounds), str(workers)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=True,
        env=env,
    )
    return json.loads(out.stdout)


# --- memory returned to the OS ------------------------------------------------------------


def build_objects(megabytes: int) -> int:
    """Build about ``megabytes`` MiB of small Python objects; return a checksum."""
    words = [str(i) for i in range(megabytes * MIB // 64)]
    return len(words)


def measure_memory(megabytes: int, tasks: int) -> dict[str, dict[str, float]]:
    expected = build_objects.__name__ and megabytes * MIB // 64
    out = {}
    executors: dict[str, Callable[[], concurrent.futures.Executor]] = {
        "forkpool": lambda: forkpool.ForkPerTaskExecutor(2),
        "PPE reused workers (fork)": lambda: concurrent.futures.ProcessPoolExecutor(
            2, multiprocessing.get_context("fork")
        ),
    }
    for name, make in executors.items():
        before = tree_rss()
        with make() as executor:
            results = [
                f.result()
                for f in [executor.submit(build_objects, megabytes) for _ in range(tasks)]
            ]
            after = tree_rss()
        if results != [expected] * tasks:
            msg = f"{name} returned wrong results"
            raise AssertionError(msg)
        out[name] = {"before_mib": before / MIB, "after_mib": after / MIB}
    return out


# --- large results ------------------------------------------------------------------------


def make_bytes(size: int) -> bytes:
    return b"\x5a" * size


def make_bytearray(size: int) -> bytearray:
    return bytearray(b"\x5a") * size


def make_numpy(size: int) -> Any:
    import numpy as np  # noqa: PLC0415 - optional

    return np.full(size, 0x5A, dtype=np.uint8)


# The buffers every contender moves, made before any worker is forked so that each
# worker (forkpool's children and ProcessPoolExecutor's warm worker alike) inherits
# them: returning one measures moving it, apart from the cost of building it.
LARGE: dict[str, Any] = {}


def get_large(kind: str) -> Any:
    return LARGE[kind]


def measure_large_results(size: int, rounds: int) -> dict[str, dict[str, float]]:
    makers: dict[str, Callable[[int], Any]] = {"bytes": make_bytes, "bytearray": make_bytearray}
    try:
        import numpy as np  # noqa: F401, PLC0415 - optional

        makers["numpy"] = make_numpy
    except ImportError:
        pass
    LARGE.update((kind, make(size)) for kind, make in makers.items())
    out: dict[str, dict[str, float]] = {}
    try:
        with (
            forkpool.ForkPerTaskExecutor(1) as fp,
            concurrent.futures.ProcessPoolExecutor(1, multiprocessing.get_context("fork")) as pool,
        ):
            pool.submit(double, 1).result()  # a warm worker, holding LARGE
            for kind, make in makers.items():

                def check(value: Any, kind: str = kind) -> None:
                    if (
                        type(value) is not type(LARGE[kind])
                        or len(value) != size
                        or bytes(value[:1]) != b"\x5a"
                        or bytes(value[-1:]) != b"\x5a"
                    ):
                        msg = f"large {kind} result corrupted"
                        raise AssertionError(msg)

                contenders = {
                    "forkpool": lambda kind=kind: check(fp.submit(get_large, kind).result()),
                    "PPE (fork, warm worker)": lambda kind=kind: check(
                        pool.submit(get_large, kind).result()
                    ),
                    "one in-process copy": lambda kind=kind: check(copy_of(LARGE[kind])),
                    "forkpool, built in the task": lambda make=make: check(
                        fp.submit(make, size).result()
                    ),
                    "PPE, built in the task": lambda make=make: check(
                        pool.submit(make, size).result()
                    ),
                }
                # Each contender starts on recently used memory; see warm_memory.
                times = interleaved(contenders, rounds, lambda: warm_memory(4 * size))
                out[kind] = {name: statistics.median(seconds) for name, seconds in times.items()}
    finally:
        LARGE.clear()
    return out


def copy_of(value: Any) -> Any:
    """One in-process copy, of the same type."""
    return value.copy() if hasattr(value, "copy") else type(value)(memoryview(value))


# --- a small parent: the mold's throughput, and latency as the parent grows ---------------

SMALL_PARENT = Path(__file__).resolve().parent / "small_parent.py"


def measure_small_parent(*, smoke: bool) -> dict[str, Any]:
    """The mold's measurements, run by ``small_parent.py`` in a program of its own.

    In this process, the mold and the bare fork loop would both carry the bench's
    imports (see that file).
    """
    out = subprocess.run(
        [sys.executable, str(SMALL_PARENT), *(["--smoke"] if smoke else [])],
        capture_output=True,
        text=True,
        timeout=3600,
        check=True,
    )
    return json.loads(out.stdout)


# --- Redis cost -----------------------------------------------------------------------------


def measure_redis_commands(url: str, tasks: int, workers: int) -> float:
    client = redis.Redis.from_url(url)

    def calls() -> int:
        stats = client.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")

    before = calls()
    run_executor(forkpool.ForkPerTaskExecutor(workers, redis=url, key_prefix="bench-count"), tasks)
    per_task = (calls() - before) / tasks
    client.close()
    return per_task


# --- what importing forkpool costs a process -----------------------------------------------

IMPORT_PROBE = Path(__file__).resolve().parent / "import_probe.py"
IMPORT_CASES = {
    "nothing": [],
    "forkpool": ["forkpool"],
    "forkpool and redis-py": ["forkpool", "redis"],
}


def measure_import_cost(forks: int, rounds: int) -> dict[str, dict[str, float]]:
    """Per case, in fresh interpreters: medians of import time, anonymous memory, fork cost.

    Every contender elsewhere in the bench forks this process, which has imported
    everything; a user's small program has not, and its forks cost what it holds.
    """
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in IMPORT_CASES}
    for _ in range(rounds):
        for label, modules in IMPORT_CASES.items():
            out = subprocess.run(
                [sys.executable, str(IMPORT_PROBE), str(forks), *modules],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            run = json.loads(out.stdout)
            if label == "forkpool" and "redis" in run["top_level_modules"]:
                msg = "importing forkpool and running nothing imported redis-py"
                raise AssertionError(msg)
            runs[label].append(run)
    return {
        label: {
            key: statistics.median(run[key] for run in label_runs)
            for key in ("import_s", "anonymous_bytes", "fork_exit_reap_s")
        }
        for label, label_runs in runs.items()
    }


# --- report ---------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(target, measured, required, met) for every target of the suite."""
    rate = results["throughput_tasks_per_s"]
    bare = rate["bare fork loop"]
    rows = [
        ("forkpool / bare fork loop", rate["forkpool"] / bare, 0.9),
        ("forkpool + Redis / bare fork loop", rate["forkpool + Redis"] / bare, 0.8),
        # The mold made here, after the bench's imports, as big as the parent it forks
        # for; small_parent.py measures both in a program that imports forkpool only.
        ("forkpool + mold / bare fork loop", rate["forkpool + mold"] / bare, 0.8),
        (
            "forkpool + metrics / forkpool (metrics cost)",
            rate["forkpool + metrics"] / rate["forkpool"],
            0.95,
        ),
    ]
    for main in MAIN_MODULES:
        pools = results["pools"][main]["tasks_per_s"]
        for contender, required in (
            ("PPE max_tasks_per_child=1 (forkserver)", 10.0),
            ("pebble ProcessPool(max_tasks=1)", 20.0),
        ):
            if contender in pools:
                rows.append(
                    (
                        f"forkpool / {contender}, {main} __main__",
                        pools["forkpool"] / pools[contender],
                        required,
                    )
                )
    memory = results["memory_mib"]["forkpool"]
    rows.append(
        (
            "forkpool tree RSS growth (MiB, at most)",
            memory["after_mib"] - memory["before_mib"],
            10.0,
        )
    )
    size = results["large_result_mib"]
    for kind, times in results["large_results_s"].items():
        for how, ours, theirs in (
            ("moved", "forkpool", "PPE (fork, warm worker)"),
            (
                "built in the task and moved",
                "forkpool, built in the task",
                "PPE, built in the task",
            ),
        ):
            rows.append(
                (
                    f"{kind} {size} MiB result, {how}: PPE time / forkpool time",
                    times[theirs] / times[ours],
                    1.5,
                )
            )
            if kind != "bytes":
                rows.append(
                    (
                        f"{kind} {size} MiB result, {how}: forkpool / one copy (at most)",
                        times[ours] / times["one in-process copy"],
                        3.0,
                    )
                )
    small = results["small_parent"]
    small_rate = small["throughput_tasks_per_s"]
    sizes = small["latency_s_by_parent_mib"]
    biggest = max(sizes, key=int)
    latency = sizes[biggest]
    rows.extend(
        [
            (
                "small parent: forkpool + mold / bare fork loop",
                small_rate["forkpool + mold"] / small_rate["bare fork loop"],
                0.8,
            ),
            (
                f"latency at {biggest} MiB parent: forkpool / bare (at most)",
                latency["forkpool"] / latency["bare fork loop"],
                1.1,
            ),
            (
                f"latency at {biggest} MiB parent: forkpool / forkpool + mold",
                latency["forkpool"] / latency["forkpool + mold"],
                15.0,
            ),
            (
                f"latency at {biggest} MiB parent: forkpool + mold (ms, at most)",
                latency["forkpool + mold"] * 1000,
                3.0,
            ),
        ]
    )
    rows.append(("Redis commands per task (at most)", results["redis_commands_per_task"], 2.0))
    celery = results["celery"]
    per_task = celery["per_task_ms"]
    rows.append(
        (
            "Celery per no-op task: prefork max_tasks_per_child=1 / forkpool pool",
            per_task["prefork max_tasks_per_child=1"] / per_task["forkpool pool"],
            10.0,
        )
    )
    rows.append(
        (
            "Celery per no-op task: forkpool pool (mold) / prefork (at most)",
            per_task["forkpool pool"] / per_task["prefork"],
            3.0,
        )
    )
    for label in ("forkpool pool", "forkpool pool, fork from worker", "prefork + ForkedTask"):
        rss = celery["tree_rss_mib"][label]
        rows.append(
            (
                f"Celery {label}: RSS growth, {celery['heavy_tasks']} heavy tasks (MiB, at most)",
                rss["after_mib"] - rss["before_mib"],
                10.0,
            )
        )
    out = []
    for name, measured, required in rows:
        at_most = "at most" in name
        out.append(
            (name, measured, required, measured <= required if at_most else measured >= required)
        )
    return out


def print_report(results: dict[str, Any]) -> None:
    print(f"forkpool benchmarks, {results['date']}, {results['machine']}")
    print("\ntask throughput (tasks/s, median):")
    for name, rate in sorted(results["throughput_tasks_per_s"].items(), key=lambda kv: -kv[1]):
        print(f"  {name:<42} {rate:9.1f}")
    _print_pools(results)
    print("\nprocess-tree RSS around the heavy tasks (MiB):")
    for name, rss in results["memory_mib"].items():
        print(f"  {name:<42} {rss['before_mib']:7.0f} -> {rss['after_mib']:7.0f}")
    print(f"\n{results['large_result_mib']} MiB results (seconds, median):")
    for kind, times in results["large_results_s"].items():
        print("  " + kind + ": " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()))
    small = results["small_parent"]
    print(
        f"\na small parent ({small['modules_loaded']} modules loaded), its mold made first:"
        "\n  throughput (tasks/s, median): "
        + ", ".join(f"{k} {v:.1f}" for k, v in small["throughput_tasks_per_s"].items())
    )
    print("  per-task latency by parent size (ms):")
    for size, times in small["latency_s_by_parent_mib"].items():
        print(f"    {size:>5} MiB: " + ", ".join(f"{k} {v * 1000:.2f}" for k, v in times.items()))
    print(f"\nRedis commands per task: {results['redis_commands_per_task']:.2f}")
    print("\na fresh interpreter, by what it imports (medians):")
    for label, cost in results["import_cost"].items():
        print(
            f"  {label:<42} import {cost['import_s'] * 1000:6.0f} ms,"
            f" anonymous {cost['anonymous_bytes'] / MIB:5.1f} MiB,"
            f" fork+exit+reap {cost['fork_exit_reap_s'] * 1000:5.2f} ms"
        )
    celery = results["celery"]
    print(f"\nCelery workers, -c {celery['concurrency']} (ms per no-op task, median of bursts):")
    for name, ms in celery["per_task_ms"].items():
        print(f"  {name:<42} {ms:9.2f}")
    print("the floor of a fresh process per task (the app's process forked, no worker):")
    for name, ms in celery["floor_ms"].items():
        print(f"  {name:<42} {ms:9.2f}  ({ms / celery['per_task_ms']['prefork']:.2f} x prefork)")
    print(
        f"Celery worker tree RSS around {celery['heavy_tasks']} tasks keeping"
        f" {celery['heavy_mib']} MiB each (MiB):"
    )
    for name, rss in celery["tree_rss_mib"].items():
        print(f"  {name:<42} {rss['before_mib']:7.0f} -> {rss['after_mib']:7.0f}")
    print("\ntargets:")
    for name, measured, required, met in results["targets"]:
        print(f"  [{'met' if met else 'MISSED'}] {name}: {measured:.2f} (target {required:g})")


def _print_pools(results: dict[str, Any]) -> None:
    for main, pools in results["pools"].items():
        print(
            f"\nprocess pools, {main} __main__ (tasks/s, median; its extra imports took"
            f" {pools['extra_import_s'] * 1000:.0f} ms once):"
        )
        for name, rate in sorted(pools["tasks_per_s"].items(), key=lambda kv: -kv[1]):
            print(f"  {name:<50} {rate:9.1f}")


def chart(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib as mpl  # noqa: PLC0415 - only the bench session installs it

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed; no chart")
        return
    minimal = results["pools"]["minimal"]["tasks_per_s"]
    rates = sorted(
        [
            *results["throughput_tasks_per_s"].items(),
            *((f"{name} [minimal __main__]", rate) for name, rate in minimal.items()),
        ],
        key=lambda kv: kv[1],
    )
    figure, axis = plt.subplots(figsize=(11.5, 5))
    colors = ["#dd8452" if name.startswith("forkpool") else "#4c72b0" for name, _ in rates]
    bars = axis.barh([name for name, _ in rates], [rate for _, rate in rates], color=colors)
    axis.bar_label(bars, labels=[f"{rate:,.0f}" for _, rate in rates], padding=3)
    axis.set_xscale("log")  # reused workers run thousands per second, fresh processes tens
    axis.set_xlabel("tasks per second (median, log scale; higher is better)")
    axis.set_title(
        f"Trivial tasks, 2 workers ({results['date']}, {results['machine']})", fontsize=9
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def warm_memory(size: int) -> None:
    """Touch ``size`` bytes once, then free them.

    On a virtual machine the first touch of guest memory the host has not backed
    yet costs several times a normal page fault. A guest with free page reporting
    (virtio-balloon) hands memory that stayed free for a few seconds back to the
    host, so this recurs all through a run: on the machine of 2026-12-02, building a
    256 MiB numpy array took 40 ms right after 1 GiB had been touched and freed, and
    450-680 ms after 3 s without large allocations (sleeping or spinning alike).
    Without a warm-up, that cost lands on whichever contender allocates the most
    fresh memory, not on the one that moves data slowest.
    """
    import mmap  # noqa: PLC0415

    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    # In huge pages, as the large buffers measured here mostly are: warmed in 4 KiB
    # pages, a 256 MiB build in a child still took 40-400 ms; in huge pages, 38-41 ms.
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE)
    try:
        region.madvise(23)  # MADV_POPULATE_WRITE (Linux 5.14)
    except OSError:
        region[:: mmap.PAGESIZE] = b"\x01" * len(range(0, size, mmap.PAGESIZE))
    region.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few tasks per contender")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--chart-only", type=Path, help="redraw the chart from a results file")
    args = parser.parse_args()
    if args.chart_only:
        chart(json.loads(args.chart_only.read_text()), args.out / "bench-chart.png")
        return 0
    smoke = args.smoke
    # Every contender forks, some from a process with threads; Python 3.12+ warns each
    # time (forkpool silences it around its own fork only).
    warnings.filterwarnings(
        "ignore", r"This process \(pid=\d+\) is multi-threaded", DeprecationWarning
    )
    large_mib = 4 if smoke else 256
    # Made before any thread starts, but after the bench's imports (Celery, redis-py,
    # prometheus_client): the throughput table's "forkpool + mold" has a mold made in
    # a grown program. small_parent.py measures one made early, in a small one.
    mold = forkpool.Mold.fork()
    server = OwnServer()
    server.start()
    try:
        results: dict[str, Any] = {
            "date": dt.datetime.now(dt.UTC).date().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}",
            "smoke": smoke,
            "throughput_tasks_per_s": measure_throughput(
                tasks=6 if smoke else 300,
                rounds=1 if smoke else 5,
                workers=2,
                redis_url=server.url,
                mold=mold,
            ),
            "pools": {
                main: measure_pools(
                    main,
                    # A spawned worker with the realistic imports takes most of a
                    # second to start: fewer tasks, and rounds, there.
                    tasks=6 if smoke else (300 if main == "minimal" else 40),
                    rounds=1 if smoke else (5 if main == "minimal" else 3),
                    workers=2,
                )
                for main in MAIN_MODULES
            },
            "memory_mib": measure_memory(megabytes=8 if smoke else 400, tasks=2 if smoke else 4),
            "large_result_mib": large_mib,
            "large_results_s": measure_large_results(
                size=large_mib * MIB, rounds=1 if smoke else 5
            ),
            "small_parent": measure_small_parent(smoke=smoke),
            "redis_commands_per_task": measure_redis_commands(
                server.url, tasks=10 if smoke else 300, workers=2
            ),
            "import_cost": measure_import_cost(
                forks=20 if smoke else 300, rounds=1 if smoke else 5
            ),
            "celery": measure_celery(
                server.url,
                tasks=4 if smoke else 40,
                rounds=1 if smoke else 5,
                heavy_tasks=2 if smoke else 20,
                heavy_mib=8 if smoke else 50,
            ),
        }
    finally:
        server.stop()
        mold.close()
    results["targets"] = targets(results)
    print_report(results)
    if not smoke:
        (args.out / "bench-results.json").write_text(json.dumps(results, indent=2) + "\n")
        chart(results, args.out / "bench-chart.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
