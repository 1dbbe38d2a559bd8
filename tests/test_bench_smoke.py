"""The benchmark suite's smoke form: every contender runs and is checked, quickly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent / "benchmarks" / "bench.py"


@pytest.mark.hosts
@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path):
    """bench.py --smoke runs every measurement and checks every result it gets."""
    result = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sections = (
        "task throughput",
        "process pools, minimal __main__",
        "process pools, realistic __main__",
        "process-tree RSS",
        "MiB results",
        "a small parent",
        "latency",
        "a fresh interpreter",
        "Celery workers",
        "the floor of a fresh process per task",
    )
    for section in (*sections, "targets:"):
        assert section in result.stdout
    contenders = [
        "bare fork loop",
        "forkpool + Redis",
        "pebble",
        "forkpool pool",
        "ForkedTask",
        "(forkserver)",
        "(spawn)",
    ]
    for contender in contenders:
        assert contender in result.stdout
