"""``retia dashboard PATH|ADDRESS``: a live, read-only web view of an experiment directory or a dispatcher."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from retia.credentials import CREDENTIAL_ENV
from retia.errors import RetiaError

__all__ = ["add_dashboard_arguments", "run_dashboard", "TOKEN_ENV"]

TOKEN_ENV = "RETIA_DASHBOARD_TOKEN"


def add_dashboard_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", help="an experiment directory, or a dispatcher endpoint like tcp://head:5555"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port (default %(default)s; 0: any free one)")
    parser.add_argument(
        "--token",
        default=None,
        help=f"the token a browser must present (default ${TOKEN_ENV}; off loopback one is generated)",
    )
    parser.add_argument(
        "--credential", type=Path, help=f"a client credential file for ADDRESS (default ${CREDENTIAL_ENV})"
    )


def run_dashboard(args: argparse.Namespace) -> int:
    from .app import create_app, is_loopback
    from .server import DashboardServer
    from .source import ClusterSource, ExperimentSource

    token = args.token or os.environ.get(TOKEN_ENV) or None
    loopback = is_loopback(args.host)
    if not loopback and not token:
        token = secrets.token_urlsafe(24)
    cluster = None
    try:
        if "://" in args.target:
            cluster = ClusterSource(args.target, args.credential)
            source = None
        else:
            source = ExperimentSource(args.target)
        app = create_app(source, cluster, token=token, loopback=loopback)
        server = DashboardServer(app, args.host, args.port, token)
    except (RetiaError, OSError) as exc:
        print(f"retia dashboard: {exc}", file=sys.stderr)
        return 2
    print(f"retia dashboard: {server.url}", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if cluster is not None:
            cluster.close()
    return 0
