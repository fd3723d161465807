"""``retia status``: a dispatcher's workers and trial counts, asked as a client would."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from retia.credentials import CREDENTIAL_ENV, resolve_credential
from retia.errors import RetiaError
from retia.keys import KEY_ENV

__all__ = ["add_status_arguments", "run_status"]


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        nargs="?",
        default="",
        help="dispatcher endpoint, e.g. tcp://head:5555 (default: the credential's)",
    )
    parser.add_argument(
        "--credential",
        type=Path,
        help=f"an admin credential file (retia credential issue --role admin; default ${CREDENTIAL_ENV})",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        help=f"or the cluster key file, on the head node (default ${KEY_ENV} or ~/.retia/cluster.key)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for an answer (default %(default)s)"
    )
    parser.add_argument(
        "--curve-server-key", type=Path, help="the dispatcher's public CurveZMQ certificate (with --curve)"
    )


def run_status(args: argparse.Namespace) -> int:
    from .backend import query_status

    try:
        credential = resolve_credential(args.credential, key_file=args.key_file)
        address = args.address or credential.address
        if not address:
            raise RetiaError(f"no dispatcher address: pass one; {credential.label} names none")
        status = query_status(
            address, credential, timeout=args.timeout, curve_server_key=args.curve_server_key
        )
    except RetiaError as exc:
        print(f"retia status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "dispatcher": status.dispatcher_id,
                    "uptime": status.uptime,
                    "workers": [w.__dict__ for w in status.workers],
                    "trials": status.counts,
                },
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{status.dispatcher_id} — up {status.uptime:.0f}s")
    for column in ("worker", "host", "gpu", "state", "trial", "uptime"):
        table.add_column(column)
    for w in status.workers:
        table.add_row(w.worker_id, w.host, w.gpu, w.state, w.trial or "-", f"{w.uptime:.0f}s")
    console.print(table)
    console.print("trials: " + ", ".join(f"{state.lower()} {n}" for state, n in status.counts.items()))
    return 0
