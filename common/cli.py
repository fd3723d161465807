"""The ``retia`` command: ``dispatcher``, ``credential``, ``worker``, ``status``, ``report``, ``dashboard``.

Each subcommand's options live beside the code it runs; this module only routes, importing
the head-node or worker side lazily so ``retia --help`` stays fast and torch-free.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import resource
import sys
from collections.abc import Callable

__all__ = ["main", "build_parser", "raise_open_file_limit"]

_log = logging.getLogger(__name__)

# subcommand -> (module, add-arguments function, run function, one-line help)
_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "dispatcher": (
        "retia.dispatcher.cli",
        "add_dispatcher_arguments",
        "run_dispatcher",
        "run the dispatcher on the head node (queue, journal, relaying reports)",
    ),
    "credential": (
        "retia.dispatcher.credential_cli",
        "add_credential_arguments",
        "run_credential",
        "issue or revoke a worker's, a user's or an admin's credential (on the head node)",
    ),
    "worker": (
        "retia.worker.cli",
        "add_worker_arguments",
        "run_worker",
        "run a worker agent (one per GPU) connected to a dispatcher",
    ),
    "status": (
        "retia.client.cli",
        "add_status_arguments",
        "run_status",
        "show a dispatcher's workers and trial counts",
    ),
    "report": (
        "retia.client.summary",
        "add_report_arguments",
        "run_report",
        "write a PNG and a Markdown summary of an experiment directory",
    ),
    "dashboard": (
        "retia.client.dashboard.cli",
        "add_dashboard_arguments",
        "run_dashboard",
        "a live, read-only web view of an experiment directory or a dispatcher",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retia",
        description="Distributed model evaluation for neural architecture search.",
        epilog="Run 'retia <command> --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (module, add_args, _run, help_text) in _COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        try:
            getattr(importlib.import_module(module), add_args)(sub_parser)
        except ImportError:  # a slim install (e.g. the dispatcher image) may lack a side's dependencies
            sub_parser.set_defaults(_unavailable=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unavailable = getattr(args, "_unavailable", None)
    if unavailable:
        print(f"retia {args.command}: {unavailable} cannot be imported in this installation", file=sys.stderr)
        return 2
    module, _add, run, _help = _COMMANDS[args.command]
    runner: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), run)
    return runner(args)


def raise_open_file_limit(who: str) -> int:
    """Raise the soft open-file limit to the hard one and log the ceiling; each TCP connection to the
    dispatcher (and each pipe and file a worker holds) takes one descriptor. Returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # e.g. an unlimited hard limit the kernel caps lower
            _log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, exc)
    ceiling = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    _log.info("%s: open-file limit %s (each connection or open file takes one)", who, ceiling)
    return soft


if __name__ == "__main__":
    sys.exit(main())
