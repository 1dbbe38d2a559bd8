"""CPython's own concurrent.futures tests, each Python's own, run against ForkPerTaskExecutor.

The executor, wait, as_completed and shutdown test classes of
``test.test_concurrent_futures`` (shipped with the interpreter) are combined with a
mixin that makes ``self.executor`` a ForkPerTaskExecutor, as CPython's own mixins do
for its executors. Three shutdown tests start a fresh interpreter with a script that
imports the executor class by name from ``concurrent.futures``; they run with that
one import reading ``from forkpool import ...`` instead. Nothing else is changed.

From Python 3.13 on (the tests became a package of modules then), each interpreter
runs the tests it ships, which match its own stdlib; only where the interpreter
ships its test package (Debian splits it out: ``python-from-debian --with-tests``).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import sys
import types
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if sys.version_info < (3, 13):
    pytest.skip("CPython's concurrent.futures tests are run on 3.13+", allow_module_level=True)
pytest.importorskip("test.support", reason="this interpreter ships no test package")

from test.test_concurrent_futures import (
    executor,
    test_as_completed,
    test_wait,
    util,
)

from forkpool import ForkPerTaskExecutor

if TYPE_CHECKING:
    from multiprocessing.managers import SyncManager

_STDLIB_IMPORT = "from concurrent.futures import {executor_type}"
_OUR_IMPORT = "from forkpool import {executor_type}"


def _shutdown_tests() -> types.ModuleType:
    """test_shutdown, with its scripts importing the executor from forkpool."""
    name = "test.test_concurrent_futures.test_shutdown"
    spec = importlib.util.find_spec(name)
    assert spec is not None
    assert spec.origin is not None
    source = Path(spec.origin).read_text(encoding="utf-8")
    # If CPython's scripts change, this harness must be looked at again.
    assert source.count(_STDLIB_IMPORT) == 3, "test_shutdown's scripts changed"
    module = types.ModuleType("forkpool_cpython_test_shutdown")
    module.__package__ = "test.test_concurrent_futures"
    module.__file__ = spec.origin
    code = compile(source.replace(_STDLIB_IMPORT, _OUR_IMPORT), spec.origin, "exec")
    exec(code, module.__dict__)  # noqa: S102 - CPython's own test module, one import changed
    return module


test_shutdown = _shutdown_tests()


class ForkPoolMixin(util.ExecutorMixin):
    """Makes ``self.executor`` a ForkPerTaskExecutor with CPython's worker count.

    From 3.14 on the tests wait on events a task can see (``create_event``): a
    multiprocessing manager's, as CPython's process-pool mixins give them.
    """

    executor_type = ForkPerTaskExecutor
    _events: SyncManager | None = None

    def create_event(self):
        if self._events is None:
            with warnings.catch_warnings():
                # The manager's process is forked from this threaded one.
                warnings.filterwarnings("ignore", ".*multi-threaded", DeprecationWarning)
                self._events = multiprocessing.get_context("fork").Manager()
        return self._events.Event()

    def tearDown(self):
        if self._events is not None:
            self._events.shutdown()
            self._events = None
        super().tearDown()


class ForkPoolExecutorTest(executor.ExecutorTest, ForkPoolMixin, util.BaseTestCase):
    """CPython's ExecutorTest."""


class ForkPoolWaitTest(test_wait.WaitTests, ForkPoolMixin, util.BaseTestCase):
    """CPython's WaitTests."""


class ForkPoolAsCompletedTest(test_as_completed.AsCompletedTests, ForkPoolMixin, util.BaseTestCase):
    """CPython's AsCompletedTests."""


class ForkPoolShutdownTest(test_shutdown.ExecutorShutdownTest, ForkPoolMixin, util.BaseTestCase):
    """CPython's ExecutorShutdownTest."""
