"""``retia credential``: issue and revoke per-peer credentials on the head node (it holds the cluster key)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from retia.credentials import Role, issue
from retia.encryption import public_key, reachable_from_afar, server_certificate
from retia.errors import RetiaError
from retia.keys import DEFAULT_HOME, resolve_key
from retia.protocol import id_problem

from .config import DispatcherConfig
from .journal import record_revocation

__all__ = ["add_credential_arguments", "run_credential"]


def add_credential_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help="the dispatcher's state directory: its cluster key and journal (default %(default)s)",
    )
    parser.add_argument("--key-file", type=Path, help="cluster key file (default <home>/cluster.key)")
    actions = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    new = actions.add_parser(
        "issue",
        help="write a credential file for one worker pool, user or admin",
        description="Write a credential (mode 0600) holding all a peer needs: role, name, its key "
        "(derived from the cluster key, which stays here), the dispatcher's address and, when the "
        "transport is encrypted, the dispatcher's public key.",
    )
    new.add_argument("--role", required=True, choices=[r.value for r in Role], help="what it may do")
    new.add_argument("--name", required=True, help="who holds it (a user, a worker pool); revoked by name")
    new.add_argument(
        "--address", default="", help="the dispatcher's endpoint as peers reach it, e.g. tcp://head:5555"
    )
    new.add_argument("--out", required=True, help="the file to write (mode 0600), or - for standard output")
    new.add_argument("--force", action="store_true", help="replace --out if it exists")
    new.add_argument(
        "--insecure",
        action="store_true",
        help="the dispatcher runs with --insecure (or on loopback only): leave its public key out",
    )
    gone = actions.add_parser(
        "revoke",
        help="refuse every credential of a name issued until now",
        description="Record in the journal that credentials of NAME issued until now are refused; a "
        "running dispatcher cuts their sessions within a heartbeat. A credential issued later works.",
    )
    gone.add_argument("name", help="the credential's name")
    gone.add_argument("--journal", help="the journal (default <home>/journal.sqlite)")


def run_credential(args: argparse.Namespace) -> int:
    try:
        if args.action == "issue":
            return _issue(args)
        return _revoke(args)
    except RetiaError as exc:
        print(f"retia credential: {exc}", file=sys.stderr)
        return 2


def _issue(args: argparse.Namespace) -> int:
    home = args.home.expanduser()
    key = resolve_key(key_file=args.key_file or home / "cluster.key")
    server_key = ""
    certificate = home / "curve" / "dispatcher.key"
    # the dispatcher encrypts off loopback (its certificate is made here if it has not started yet),
    # and wherever it has a certificate, whatever name this credential reaches it by
    wanted = (args.address and reachable_from_afar(args.address)) or certificate.exists()
    if wanted and not args.insecure:
        public, _secret = server_certificate(home)
        server_key = public_key(public)
    credential = issue(key, Role(args.role), args.name, address=args.address, server_key=server_key)
    if args.out == "-":
        print(credential.to_json())
    else:
        credential.save(Path(args.out), overwrite=args.force)
        print(f"wrote {credential.label} to {args.out} (mode 0600)", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if problem := id_problem(args.name, "a credential name"):
        raise RetiaError(problem)
    journal = args.journal or DispatcherConfig(home=args.home).journal_path
    if not Path(journal).exists():
        raise RetiaError(f"no journal at {journal}: pass the dispatcher's --home (or --journal)")
    record_revocation(journal, args.name, time.time_ns())
    print(f"revoked every credential named {args.name!r} issued until now (in {journal})", file=sys.stderr)
    return 0
