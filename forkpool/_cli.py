"""The ``forkpool`` command: look at and act on the children tracked in Redis.

``forkpool ps``, ``forkpool reap``, ``forkpool kill-all`` and ``forkpool demo``.
Every error is one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, cast

from forkpool import _procfs
from forkpool._entry import Keys
from forkpool._errors import signal_name
from forkpool._reaper import Reaper, Stopper, read_entries
from forkpool._redis import FAILURES, Client, client_from_url, describe_failure, redact
from forkpool._report import CliError, collect_rows, plural, render_table, shown
from forkpool._tracking import URL_ENV, default_host
from forkpool._version import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger("forkpool.cli")

EXIT_ERROR = 2
EXIT_REFUSED = 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(name)s: %(message)s",
    )
    try:
        status: int = args.run(args)
    except CliError as exc:
        _fail(str(exc))
        return EXIT_ERROR
    except FAILURES as exc:
        _fail(describe_failure(exc, args.redis_label))
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        # SIGTERM and SIGHUP in the demo arrive as a KeyboardInterrupt with the signal.
        signum = getattr(exc, "signum", signal.SIGINT)
        _fail("interrupted" if signum == signal.SIGINT else f"stopped by {signal_name(signum)}")
        return 128 + signum
    return status


def _fail(message: str) -> None:
    print(f"forkpool: error: {message}", file=sys.stderr)


def _common_options(*, defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after the command's name.

    Only the top-level parser carries defaults: a subcommand's own default would
    overwrite a value given before the subcommand (``forkpool -v ps``).
    """

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis",
        metavar="URL",
        default=default(os.environ.get(URL_ENV) or None),
        help=f"Redis URL, e.g. redis://localhost:6379/0 (default: ${URL_ENV})",
    )
    common.add_argument(
        "--prefix",
        default=default("forkpool"),
        help="the executors' key_prefix (default: forkpool)",
    )
    common.add_argument(
        "--host",
        default=default(None),
        help="host name in Redis (default: $FORKPOOL_HOST, else this machine's name)",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="log at DEBUG level"
    )
    return common


_PS_HELP = """\
List the children of forkpool executors tracked in Redis: host, task id, pid,
callable, age, time left to the deadline and on the lease, and (on this host)
the task's own memory at its peak so far (its peak RSS less the pages it still
shares with its parent) and whether the parent is alive. Nothing tracked prints
an empty table (or [] with --json) and exits 0.
"""
_REAP_HELP = """\
Run one reaper cycle for this host, with the rules every executor applies: stop
the orphans of dead parents (verified on this kernel), remove malformed entries,
and forget hosts whose announced lease has lapsed. Prints what it did.
"""
_KILL_HELP = """\
Stop every tracked child of this host with SIGKILL and remove the entries (what
forkpool.kill_all() does). Without --yes it lists what it would stop and exits 1.
Each owner's future says who stopped its child.
"""
_DEMO_HELP = """\
Run memory-heavy tasks on ForkPerTaskExecutor and on a reused ProcessPoolExecutor,
side by side, showing throughput, the process tree's memory before and after, and
the children tracked in Redis meanwhile. Without --redis (or $FORKPOOL_REDIS_URL)
it starts an embedded Valkey server (pip install 'forkpool[embedded]') and stops
it at the end.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forkpool",
        description="Inspect and manage the children of forkpool executors tracked in Redis.",
        parents=[_common_options(defaults=True)],
    )
    parser.add_argument("--version", action="version", version=f"forkpool {__version__}")
    common = _common_options(defaults=False)
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[common],
            help=summary,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    ps = command("ps", "list tracked children", _PS_HELP)
    ps.add_argument("--all-hosts", action="store_true", help="every host, not just this one")
    ps.add_argument("--json", action="store_true", help="print a JSON list of every field")
    ps.set_defaults(run=_run_ps)

    reap = command("reap", "run one reaper cycle for this host", _REAP_HELP)
    reap.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="from SIGTERM to SIGKILL for what ignores SIGTERM (default: 5)",
    )
    reap.set_defaults(run=_run_reap)

    kill = command("kill-all", "stop every tracked child of this host", _KILL_HELP)
    kill.add_argument("--yes", action="store_true", help="really stop them")
    kill.set_defaults(run=_run_kill_all)

    demo = command(
        "demo", "show forkpool against ProcessPoolExecutor (starts Valkey if needed)", _DEMO_HELP
    )
    demo.add_argument(
        "--tasks", type=_positive_int, default=8, help="tasks per executor (default: 8)"
    )
    demo.set_defaults(run=_run_demo)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _client(args: argparse.Namespace) -> Client:
    args.redis_label = "(none)"
    if not args.redis:
        msg = f"no Redis configured: pass --redis URL or set {URL_ENV}"
        raise CliError(msg)
    args.redis_label = redact(args.redis)
    logger.debug("using Redis at %s, prefix %r", args.redis_label, args.prefix)
    try:
        return client_from_url(args.redis)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _host(args: argparse.Namespace) -> str:
    return default_host() if args.host is None else args.host


# --- ps --------------------------------------------------------------------------------


def _run_ps(args: argparse.Namespace) -> int:
    client = _client(args)
    with client:
        keys = Keys(args.prefix, _host(args))
        members = cast("list[bytes]", client.zrange(keys.hosts, 0, -1))
        known = sorted(member.decode() for member in members)
        hosts = known if args.all_hosts else [keys.host]
        if not args.all_hosts and keys.host not in known and known:
            # Not an error (a poller may ask before the host's first executor starts),
            # but a typo deserves a hint.
            print(
                f"forkpool: host {keys.host!r} has not been seen under prefix "
                f"{args.prefix!r}; known hosts: {', '.join(known)}",
                file=sys.stderr,
            )
        rows = collect_rows(client, args.prefix, hosts)
    if args.json:
        print(json.dumps([row.as_json() for row in rows], indent=2))
    elif rows:
        print(render_table(rows, time.time()))
    else:
        print(f"no tracked children on {', '.join(hosts) or 'any host'}")
    return 0


# --- reap and kill-all -----------------------------------------------------------------


def _run_reap(args: argparse.Namespace) -> int:
    client = _client(args)
    stopper = Stopper(grace=args.grace)
    reaper = Reaper(
        keys=Keys(args.prefix, _host(args)),
        facts=_procfs.LocalFacts.current(),
        stopper=stopper,
    )
    logger.debug("reaping host %r (entries in %s)", reaper.keys.host, reaper.keys.meta)
    with client:
        report = reaper.cycle(client)
    for entry in report.stopped:
        print(
            f"stopped task {shown(entry.task_id)} (pid {entry.pid}, {shown(entry.name)}): "
            "parent gone"
        )
    if report.orphans_stopped:
        orphans = plural(report.orphans_stopped, "orphaned descendant", "orphaned descendants")
        print(f"stopped {orphans}")
    for task_id in report.removed:
        print(f"removed entry {shown(task_id)}")
    for host in report.stale_hosts:
        print(f"forgot departed host {shown(host)}")
    if not (report.stopped or report.removed or report.stale_hosts or report.orphans_stopped):
        print("nothing to reap")
    # Wait out the grace so that whatever ignored SIGTERM gets SIGKILL.
    while (deadline := stopper.next_deadline()) is not None:
        time.sleep(max(0.0, deadline - time.monotonic()))
        stopper.escalate()
    return 0


def _run_kill_all(args: argparse.Namespace) -> int:
    from forkpool._reaper import (  # noqa: PLC0415
        same_context,
        stop_tracked_children,
        task_processes,
    )

    client = _client(args)
    host = _host(args)
    with client:
        if not args.yes:
            facts = _procfs.LocalFacts.current()
            entries = read_entries(client, Keys(args.prefix, host))
            alive = []
            for entry, _ in entries.valid.values():
                if same_context(entry, facts):
                    found, handles = task_processes(entry, facts)
                    Stopper(grace=0).release(handles)
                    if found:
                        alive.append(entry)
            for entry in alive:
                print(
                    f"would stop task {shown(entry.task_id)} (pid {entry.pid}, {shown(entry.name)})"
                )
            print(
                f"{plural(len(alive), 'tracked child', 'tracked children')} on {shown(host)}; "
                "pass --yes to stop them"
            )
            return EXIT_REFUSED
        stopped = stop_tracked_children(
            client, Keys(args.prefix, host), f"`forkpool kill-all` in process {os.getpid()}"
        )
    print(f"stopped {plural(stopped, 'tracked child', 'tracked children')} on {shown(host)}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from forkpool._demo import run_demo  # noqa: PLC0415 - heavy, and only for the demo

    args.redis_label = redact(args.redis) if args.redis else "(embedded)"
    return run_demo(args.tasks, redis_url=args.redis, prefix=args.prefix, host=args.host)
