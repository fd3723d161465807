"""``retia status``: a dispatcher's workers and trial counts, asked as a client would."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from retia.credentials import CREDENTIAL_ENV, resolve_credential
from retia.errors import RetiaError
from retia.keys import KEY_ENV
from retia.protocol import DeviceFacts

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


def describe_devices(facts: DeviceFacts) -> str:
    """One line for a person: which GPUs, the peak memory and the time to the first CUDA operation."""
    if not facts.gpus:
        return "CPU"
    parts = [f"GPU {','.join(facts.gpus)}"]
    if facts.uuids:  # CUDA was up: a --reuse-process child's may have been before this trial
        parts.append(f"peak {facts.peak_memory_bytes / 2**30:.2f} GiB")
    if facts.first_cuda_s is not None:
        parts.append(f"first CUDA op after {facts.first_cuda_s:.2f}s")
    elif not facts.uuids:
        parts.append("CUDA unused")
    return ", ".join(parts)


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
                    "workers": [dataclasses.asdict(w) for w in status.workers],
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
    for column in ("worker", "host", "gpu", "state", "trial", "uptime", "last trial's GPUs"):
        table.add_column(column)
    for w in status.workers:
        last = f"{w.last_trial[:12]}: {describe_devices(w.last_devices)}" if w.last_devices else "-"
        table.add_row(w.worker_id, w.host, w.gpu, w.state, w.trial or "-", f"{w.uptime:.0f}s", last)
    console.print(table)
    for w in status.workers:
        if w.blocked:
            console.print(f"[bold red]{w.worker_id} takes no trials:[/] {w.blocked}")
    console.print("trials: " + ", ".join(f"{state.lower()} {n}" for state, n in status.counts.items()))
    return 0
