"""joblib's own Parallel tests, run with "forkpool" among their process backends.

joblib's ``test_parallel`` (shipped in joblib's wheel) parametrizes most of its tests
over ``PROCESS_BACKENDS = ["multiprocessing", "loky"]``. Here that one line gains
``"forkpool"``, and the forkpool cases run in a pytest of their own, in a directory of
their own. Some tests start a fresh interpreter from a script; a ``sitecustomize``
there registers the backend, as ``import forkpool.joblib`` in the user's program would.
Nothing else is changed, and no assertion.

Deselected, by design (the README's joblib section says so): tests that read a
backend's pool object (``backend._pool``/``_workers``, which loky and multiprocessing
have), and those of joblib's memory-mapping of large arrays, which joblib documents
for loky and multiprocessing: a fork shares the parent's arrays without it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(300)]

_PROCESS_BACKENDS = 'PROCESS_BACKENDS = ["multiprocessing", "loky"]'
_WITH_FORKPOOL = 'PROCESS_BACKENDS = ["multiprocessing", "loky", "forkpool"]'
_BY_DESIGN = (
    "test_error_capture[forkpool]",  # asserts on get_workers(backend): _pool or _workers
    "test_auto_memmap_on_arrays_from_generator[forkpool]",  # memory-mapping
    "test_memmapping_leaks[forkpool]",  # memory-mapping
)


def _joblib_test_parallel() -> str:
    spec = importlib.util.find_spec("joblib.test.test_parallel")
    if spec is None or spec.origin is None:
        pytest.skip("this joblib ships no tests")
    source = Path(spec.origin).read_text(encoding="utf-8")
    # If joblib's list changes, this harness must be looked at again.
    assert source.count(_PROCESS_BACKENDS) == 1, "joblib's PROCESS_BACKENDS line changed"
    return "import forkpool.joblib\n" + source.replace(_PROCESS_BACKENDS, _WITH_FORKPOOL)


def test_joblibs_own_parallel_tests_pass_with_forkpool(tmp_path):
    """Every forkpool case of joblib's test_parallel passes, but those that read loky's insides."""
    pytest.importorskip("numpy")
    (tmp_path / "test_joblib_parallel.py").write_text(_joblib_test_parallel(), encoding="utf-8")
    (tmp_path / "sitecustomize.py").write_text("import forkpool.joblib\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    deselect = [f"--deselect=test_joblib_parallel.py::{test}" for test in _BY_DESIGN]
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "timeout=60",
            "-W",
            "ignore",  # joblib's own tests, under joblib's own (not our strict) warnings
            "-k",
            "forkpool",
            *deselect,
            "test_joblib_parallel.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    summary = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-2000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None, summary
    assert int(passed.group(1)) >= 100, summary  # 124 with joblib 1.6.0
