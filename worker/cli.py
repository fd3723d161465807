"""``retia worker``: one agent per GPU, connected to the dispatcher (``--gpus``: a node's, supervised)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from retia.cli import raise_open_file_limit
from retia.credentials import CREDENTIAL_ENV, Credential, resolve_credential
from retia.errors import RetiaError
from retia.keys import DEFAULT_HOME, KEY_ENV

from .config import DEFAULT_PRELOAD, WorkerConfig
from .isolation import forget_credentials

__all__ = ["add_worker_arguments", "run_worker", "main"]

REUSE_PREFETCH = 32  # trials a --reuse-process worker holds by default: short trials, results batched


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect", default="", help="dispatcher endpoint, e.g. tcp://head:5555 (default: the credential's)"
    )
    parser.add_argument(
        "--gpu",
        default="none",
        help="CUDA device index this worker owns, or 'none' for CPU (default %(default)s)",
    )
    parser.add_argument(
        "--gpus",
        default="",
        metavar="all|LIST",
        help="run one agent per GPU of this node under one supervising process, which restarts an agent "
        "that dies and stops them all on SIGTERM: 'all' (CUDA_VISIBLE_DEVICES, else nvidia-smi) or "
        "indices like 0,1,2,3; each agent takes every other option given here",
    )
    parser.add_argument(
        "--gpus-per-trial",
        type=int,
        default=1,
        metavar="K",
        help="with --gpus: one agent per K GPUs, whose trials get all K (default %(default)s)",
    )
    parser.add_argument(
        "--trials-per-gpu",
        type=int,
        default=1,
        metavar="N",
        help="with --gpus: N agents share each GPU, each trial capped at 1/N of its memory "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--gpu-memory-fraction",
        type=float,
        default=1.0,
        help="the share of its GPU's memory a trial may allocate (set by --trials-per-gpu; default "
        "%(default)s)",
    )
    parser.add_argument(
        "--credential",
        type=Path,
        help=f"this worker's credential (retia credential issue --role worker; default ${CREDENTIAL_ENV})",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        help=f"or the cluster key file itself (default ${KEY_ENV} or <home>/cluster.key)",
    )
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help="where trial output directories live (default %(default)s)",
    )
    parser.add_argument("--name", default="", help="worker id shown in status (default host-gpuN-pid)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per trial (default: cores / --workers-per-host)"
    )
    parser.add_argument(
        "--workers-per-host",
        type=int,
        default=1,
        help="CPU workers sharing this machine's cores (default %(default)s)",
    )
    parser.add_argument(
        "--heartbeat", type=float, default=1.0, help="heartbeat interval in seconds (default %(default)s)"
    )
    parser.add_argument(
        "--liveness", type=int, default=5, help="missed heartbeats before reconnecting (default %(default)s)"
    )
    parser.add_argument(
        "--kill-grace",
        type=float,
        default=3.0,
        help="seconds between SIGTERM and SIGKILL (default %(default)s)",
    )
    parser.add_argument(
        "--max-artifact-mb",
        type=float,
        default=50.0,
        help="per-trial cap on files sent home (default %(default)s)",
    )
    parser.add_argument(
        "--preload",
        default=",".join(DEFAULT_PRELOAD),
        help="modules the fork server imports once, so trials start warm (default %(default)s)",
    )
    parser.add_argument(
        "--blob-cache-gb",
        type=float,
        default=20.0,
        help="local cache for large arguments (default %(default)s)",
    )
    parser.add_argument(
        "--curve-server-key",
        type=Path,
        help="the dispatcher's public CurveZMQ certificate (when it runs with --curve)",
    )
    parser.add_argument(
        "--trial-memory-mb",
        type=float,
        default=0.0,
        help="memory a trial process may allocate beyond what the preloaded fork server holds; past it "
        "the trial fails with an allocation error (a pack is trained again in halves) instead of "
        "taking the machine down (default: no cap)",
    )
    parser.add_argument(
        "--reuse-process",
        action="store_true",
        help="run trials one after another in one long-lived child (replaced if it dies); "
        "for very short trials such as training-free NAS proxies. Each runs in a scratch directory that "
        "becomes trials/<id>-<attempt> when it ends, if it wrote or printed anything",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        nargs="?",
        const=1,
        metavar="N",
        help="hold N more trials while one runs (N=1 without a number), so the next starts the moment "
        "one ends and large arguments download meanwhile; with --reuse-process up to 8 queue in the "
        f"child and their results travel together. Default {REUSE_PREFETCH} with --reuse-process, "
        "else 0. Not for long trials: a held trial waits for this worker even when another one is free",
    )
    parser.add_argument(
        "--no-prefetch", dest="prefetch", action="store_const", const=0, help="same as --prefetch 0"
    )
    parser.add_argument(
        "--trial-user",
        default="",
        metavar="NAME",
        help="run each trial as this user, who cannot read the worker's key or files (the worker "
        "must run as root, as in the Docker images); default: trials run as the worker's user",
    )
    parser.add_argument(
        "--gpu-release-wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a GPU may hold memory above its idle level after a trial before the worker "
        "stops taking trials and reports the process holding it (checked with NVML when the driver "
        "has it; default %(default)s)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default %(default)s)")


def run_worker(args: argparse.Namespace) -> int:
    from .agent import Agent

    if args.gpus or args.gpus_per_trial != 1 or args.trials_per_gpu != 1:
        return _supervise(args)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    raise_open_file_limit("worker")
    try:
        credential = _credential(args)
        forget_credentials()  # read: now out of the environment the fork server and every trial inherit
        config = WorkerConfig(
            connect=args.connect or credential.address,
            gpu=str(args.gpu).lower(),
            home=args.home,
            key_file=args.key_file,
            name=args.name,
            threads=args.threads,
            workers_per_host=args.workers_per_host,
            heartbeat_interval=args.heartbeat,
            liveness=args.liveness,
            reconnect_min=min(1.0, args.heartbeat),
            kill_grace=args.kill_grace,
            max_artifact_bytes=int(args.max_artifact_mb * (1 << 20)),
            preload=tuple(m.strip() for m in args.preload.split(",") if m.strip()),
            reuse_process=args.reuse_process,
            prefetch=(REUSE_PREFETCH if args.reuse_process else 0)
            if args.prefetch is None
            else args.prefetch,
            blob_cache_bytes=int(args.blob_cache_gb * (1 << 30)),
            curve_server_key=args.curve_server_key,
            trial_user=args.trial_user,
            trial_memory_bytes=int(args.trial_memory_mb * (1 << 20)),
            gpu_memory_fraction=args.gpu_memory_fraction,
            gpu_release_wait=args.gpu_release_wait,
        )
        agent = Agent(config, credential)
    except RetiaError as exc:
        print(f"retia worker: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    agent.run()
    if agent.peer.refused:  # (a supervisor sees it: a revoked credential is no clean stop)
        print(f"retia worker: the dispatcher refused this worker: {agent.peer.refused}", file=sys.stderr)
        return 2
    return 0


def _supervise(args: argparse.Namespace) -> int:
    from .supervisor import run_supervisor

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.gpus:
        print("retia worker: --gpus-per-trial and --trials-per-gpu go with --gpus", file=sys.stderr)
        return 2
    if args.gpu != "none":
        print(
            "retia worker: give --gpus (one agent per GPU) or --gpu (this agent's), not both", file=sys.stderr
        )
        return 2
    return run_supervisor(args)


def _credential(args: argparse.Namespace) -> Credential:
    """``--credential``, ``$RETIA_CREDENTIAL``, else the cluster key (``--key-file``, ``$RETIA_KEY`` or
    <home>/cluster.key)."""
    key_file = args.key_file
    if (
        args.credential is None
        and key_file is None
        and not (os.environ.get(CREDENTIAL_ENV) or os.environ.get(KEY_ENV))
    ):
        key_file = args.home.expanduser() / "cluster.key"
    return resolve_credential(args.credential, key_file=key_file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retia.worker", description="Run a retia worker agent (one per GPU)."
    )
    add_worker_arguments(parser)
    return run_worker(parser.parse_args(argv))
