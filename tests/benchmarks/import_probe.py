"""Run by bench.py in a fresh interpreter: what importing some modules costs a process.

``python import_probe.py FORKS [MODULE ...]`` imports the modules, then forks FORKS
children that exit at once, each reaped before the next, and prints one JSON object:
the seconds the imports took, the process's anonymous memory in bytes, the median
seconds of one fork, exit and reap, and the top-level modules loaded.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time


def anonymous_bytes() -> int:
    # Not pathlib: the probe imports nothing that would count as what it measures.
    with open("/proc/self/smaps", encoding="ascii") as smaps:  # noqa: PTH123
        return 1024 * sum(int(line.split()[1]) for line in smaps if line.startswith("Anonymous:"))


def main() -> None:
    forks = int(sys.argv[1])
    started = time.perf_counter()
    for name in sys.argv[2:]:
        importlib.import_module(name)
    import_s = time.perf_counter() - started
    times = []
    for _ in range(forks):
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "import_s": import_s,
                "anonymous_bytes": anonymous_bytes(),
                "fork_exit_reap_s": statistics.median(times),
                "top_level_modules": sorted({name.split(".")[0] for name in sys.modules}),
            }
        )
    )


if __name__ == "__main__":
    main()
