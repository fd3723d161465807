"""``retia dispatcher``: the head node's command."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path

from retia.cli import raise_open_file_limit
from retia.errors import RetiaError
from retia.keys import DEFAULT_HOME, resolve_key

from .config import DispatcherConfig
from .home import secure_home

__all__ = ["add_dispatcher_arguments", "run_dispatcher", "main"]


def add_dispatcher_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind", default="tcp://0.0.0.0:5555", help="ZeroMQ endpoint to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help="state directory: key, journal, artefacts (default %(default)s)",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        help="cluster key file; created (mode 0600) if missing (default <home>/cluster.key)",
    )
    parser.add_argument(
        "--journal", help="SQLite journal path, or :memory: for none (default <home>/journal.sqlite)"
    )
    parser.add_argument(
        "--heartbeat", type=float, default=1.0, help="heartbeat interval in seconds (default %(default)s)"
    )
    parser.add_argument(
        "--liveness",
        type=int,
        default=5,
        help="missed heartbeats before a peer is dead (default %(default)s)",
    )
    parser.add_argument(
        "--max-message-mb",
        type=float,
        default=8.0,
        help="largest accepted message in MiB (default %(default)s)",
    )
    parser.add_argument(
        "--blob-budget-gb",
        type=float,
        default=20.0,
        help="blob store size before eviction (default %(default)s)",
    )
    encryption = parser.add_mutually_exclusive_group()
    encryption.add_argument(
        "--curve",
        action="store_true",
        help="encrypt with CurveZMQ even on loopback (it is on by default for endpoints other machines "
        "can reach; credentials issued here carry the public key, <home>/curve/dispatcher.key)",
    )
    encryption.add_argument(
        "--insecure",
        action="store_true",
        help="do not encrypt, even where other machines can connect: payloads, results and logs then "
        "cross the network in clear (signing stays on)",
    )
    parser.add_argument(
        "--pack-wait",
        type=float,
        default=0.1,
        help="seconds a trial submitted with pack > 1 waits for more of its kind to share its process "
        "(default %(default)s); then it runs with what there is",
    )
    parser.add_argument(
        "--placement-wait",
        type=float,
        default=60.0,
        help="seconds a trial asking for more GPUs than any connected worker has waits for such a "
        "worker to join (default %(default)s); then it fails with PlacementError",
    )
    parser.add_argument(
        "--ready-file", type=Path, help="write the bound address here once listening (for scripts)"
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")


def run_dispatcher(args: argparse.Namespace) -> int:
    from .service import Dispatcher

    _setup_logging(args.log_level)
    raise_open_file_limit("dispatcher")  # one descriptor per peer connection: the connection ceiling
    try:
        config = DispatcherConfig(
            bind=args.bind,
            home=args.home,
            key_file=args.key_file,
            journal=Path(args.journal) if args.journal and args.journal != ":memory:" else args.journal,
            heartbeat_interval=args.heartbeat,
            liveness=args.liveness,
            max_message_bytes=int(args.max_message_mb * (1 << 20)),
            ready_file=args.ready_file,
            blob_budget_bytes=int(args.blob_budget_gb * (1 << 30)),
            curve=args.curve,
            insecure=args.insecure,
            pack_wait=args.pack_wait,
            placement_wait=args.placement_wait,
        )
        secure_home(config)  # before the key is created in it
        key = resolve_key(key_file=config.key_path, create=True)
        dispatcher = Dispatcher(config, key)
    except RetiaError as exc:
        print(f"retia dispatcher: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop())
    signal.signal(signal.SIGINT, lambda *_: dispatcher.stop())
    port = dispatcher.address.rsplit(":", 1)[-1]
    where = (
        f"tcp://{socket.gethostname()}:{port}"
        if dispatcher.address.startswith("tcp://")
        else dispatcher.address
    )
    home = f" --home {args.home}" if args.home != DEFAULT_HOME else ""
    print(
        f"retia dispatcher listening on {dispatcher.address}"
        f" ({'encrypted' if config.encrypted else 'not encrypted'})\n"
        "  give each worker pool and each user a credential (the cluster key stays here):\n"
        f"    retia credential{home} issue --role worker --name workers --address {where} --out worker.cred\n"
        "    retia worker --credential worker.cred --gpu 0\n"
        f"    retia credential{home} issue --role client --name alice --address {where} --out alice.cred",
        file=sys.stderr,
        flush=True,
    )
    dispatcher.serve_forever()
    return 0


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retia.dispatcher", description="Run the retia dispatcher."
    )
    add_dispatcher_arguments(parser)
    return run_dispatcher(parser.parse_args(argv))
