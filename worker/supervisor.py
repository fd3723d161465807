"""``retia worker --gpus all``: one agent per GPU (or GPU group, or GPU share) of a node, under one
supervising process that restarts an agent that dies and stops them all on SIGTERM.

The supervisor runs no trial and talks to no dispatcher: each agent is an ordinary ``retia worker
--gpu G`` process of its own (its own fork server, connection and trials), started with the
supervisor's other options. What a restart loses is what any dead agent loses: its running trial,
which the dispatcher retries.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from retia.children import die_with_parent, exit_status
from retia.devices import visible_gpus
from retia.errors import ConfigError

__all__ = ["AgentSlot", "plan_agents", "Supervisor", "agent_command", "run_supervisor"]

_log = logging.getLogger(__name__)

# the options the supervisor takes for itself: every other one is passed on to each agent
SUPERVISOR_OPTIONS = ("gpus", "gpus_per_trial", "trials_per_gpu", "gpu", "name", "gpu_memory_fraction")
RESTART_MIN = 1.0  # seconds before restarting an agent that died; doubled while it keeps dying
RESTART_MAX = 60.0
STEADY = 60.0  # an agent that lived this long died of something new: its back-off starts over
EXIT_REFUSED = 2  # an agent's exit status for a configuration or credential it cannot use


@dataclass(frozen=True)
class AgentSlot:
    """One agent of the node: the devices it owns (``--gpu``), its name, and its share of a GPU
    (1.0: the whole of its devices)."""

    gpus: str
    name: str
    memory_fraction: float = 1.0


def plan_agents(gpus: str, per_trial: int, per_gpu: int, name: str) -> list[AgentSlot]:
    """The agents of ``--gpus`` (``all`` or a list like ``0,1,2,3``), grouped ``per_trial`` devices
    to an agent, or ``per_gpu`` agents sharing each device; a ConfigError says what is wrong."""
    if per_trial < 1 or per_gpu < 1:
        raise ConfigError(f"--gpus-per-trial and --trials-per-gpu must be >= 1 (got {per_trial}, {per_gpu})")
    if per_trial > 1 and per_gpu > 1:
        raise ConfigError(
            "--gpus-per-trial and --trials-per-gpu cannot both be above 1: either a trial spans "
            "several GPUs or several trials share one"
        )
    if gpus.strip().lower() == "all":
        devices = visible_gpus()
        if not devices:
            raise ConfigError(
                "--gpus all: this machine shows no GPU (CUDA_VISIBLE_DEVICES, nvidia-smi -L); "
                "start a CPU worker without --gpus, or name the devices (--gpus 0,1)"
            )
    else:
        devices = [part.strip() for part in gpus.split(",") if part.strip()]
        if not devices or not all(d.isdigit() for d in devices):
            raise ConfigError(f"--gpus takes 'all' or device indices like 0,1,2,3 (got {gpus!r})")
        if len(set(devices)) != len(devices):
            raise ConfigError(f"--gpus lists a device twice (got {gpus!r})")
    if len(devices) < per_trial:
        raise ConfigError(
            f"--gpus-per-trial {per_trial} needs at least {per_trial} GPUs; there are {len(devices)}"
        )
    if len(devices) % per_trial:
        _log.warning(
            "%d GPUs in groups of %d: GPU %s left unused",
            len(devices),
            per_trial,
            ",".join(devices[len(devices) - len(devices) % per_trial :]),
        )
    base = name or os.uname().nodename
    slots = []
    for start in range(0, len(devices) - per_trial + 1, per_trial):
        group = ",".join(devices[start : start + per_trial])
        label = f"{base}-gpu{group.replace(',', '-')}"
        for share in range(per_gpu):
            slots.append(
                AgentSlot(group, f"{label}-{share}" if per_gpu > 1 else label, round(1.0 / per_gpu, 6))
            )
    return slots


@dataclass
class _Agent:
    slot: AgentSlot
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = RESTART_MIN  # before the next restart
    restart_at: float = 0.0  # when it is due (0: running, or never)
    refused: bool = False  # it exited EXIT_REFUSED: restarting would only repeat it


@dataclass
class Supervisor:
    """Starts one agent per :class:`AgentSlot` with ``command(slot)``, restarts those that die
    (back-off from RESTART_MIN to RESTART_MAX), and on :meth:`stop` sends each SIGTERM, then SIGKILL
    after ``grace`` seconds."""

    slots: Sequence[AgentSlot]
    command: Callable[[AgentSlot], list[str]]
    grace: float = 10.0
    poll: float = 0.2
    _agents: list[_Agent] = field(default_factory=list)
    _stopping: bool = False

    def stop(self) -> None:
        self._stopping = True

    def run(self) -> int:
        """Supervise until :meth:`stop` (0), or until every agent was refused (EXIT_REFUSED)."""
        self._agents = [_Agent(slot) for slot in self.slots]
        try:
            for agent in self._agents:
                self._start(agent)
            while not self._stopping:
                self._watch()
                if all(agent.refused for agent in self._agents):
                    _log.error("every agent was refused (see their messages above): stopping")
                    return EXIT_REFUSED
                time.sleep(self.poll)
            return 0
        finally:
            self._stop_all()

    def _start(self, agent: _Agent) -> None:
        argv = self.command(agent.slot)
        _log.info("starting agent %s (gpu %s): %s", agent.slot.name, agent.slot.gpus, " ".join(argv))
        agent.process = subprocess.Popen(argv, preexec_fn=die_with_parent)
        agent.started = time.monotonic()
        agent.restart_at = 0.0

    def _watch(self) -> None:
        now = time.monotonic()
        for agent in self._agents:
            process = agent.process
            if process is not None and (code := process.poll()) is not None:
                agent.process = None
                if code == EXIT_REFUSED:
                    agent.refused = True
                    _log.error("agent %s exited with status %d: not restarting it", agent.slot.name, code)
                    continue
                if now - agent.started >= STEADY:
                    agent.delay = RESTART_MIN
                _log.warning(
                    "agent %s (gpu %s) %s after %.0f s: restarting it in %.0f s",
                    agent.slot.name,
                    agent.slot.gpus,
                    exit_status(code),
                    now - agent.started,
                    agent.delay,
                )
                agent.restart_at = now + agent.delay
                agent.delay = min(RESTART_MAX, agent.delay * 2)
            elif process is None and agent.restart_at and now >= agent.restart_at:
                self._start(agent)

    def _stop_all(self) -> None:
        running = [a.process for a in self._agents if a.process is not None and a.process.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + self.grace
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.warning("agent pid %d did not stop within %.0f s: killing it", process.pid, self.grace)
                process.kill()
                process.wait()


def agent_command(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> Callable[[AgentSlot], list[str]]:
    """The command line of one agent: ``python -m retia.worker`` with every option of ``args``
    that differs from its default (the supervisor's own left out), then the slot's device and name."""
    passed: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in SUPERVISOR_OPTIONS or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            passed.append(_long_option(action))
        elif isinstance(action, argparse._StoreConstAction):
            continue  # (--no-prefetch: its dest, prefetch, is passed by --prefetch)
        else:
            passed += [_long_option(action), str(value)]

    def command(slot: AgentSlot) -> list[str]:
        argv = [sys.executable, "-m", "retia.worker", *passed, "--gpu", slot.gpus, "--name", slot.name]
        fraction = round(slot.memory_fraction * args.gpu_memory_fraction, 6)  # (a share of the user's cap)
        if fraction < 1.0:
            argv += ["--gpu-memory-fraction", str(fraction)]
        return argv

    return command


def _long_option(action: argparse.Action) -> str:
    return next(o for o in action.option_strings if o.startswith("--"))


def run_supervisor(args: argparse.Namespace) -> int:
    """``retia worker --gpus ...``: plan the agents and supervise them."""
    from .cli import add_worker_arguments

    parser = argparse.ArgumentParser()
    add_worker_arguments(parser)
    try:
        slots = plan_agents(args.gpus, args.gpus_per_trial, args.trials_per_gpu, args.name)
    except ConfigError as exc:
        print(f"retia worker: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.workers_per_host == 1 and args.threads == 0:
        args.workers_per_host = len(slots)  # the node's cores shared among its agents' trials
    supervisor = Supervisor(slots, agent_command(args, parser), grace=args.kill_grace + 10.0)
    signal.signal(signal.SIGTERM, lambda *_: supervisor.stop())
    signal.signal(signal.SIGINT, lambda *_: supervisor.stop())
    _log.info(
        "supervising %d agents on %s: %s",
        len(slots),
        os.uname().nodename,
        ", ".join(f"{s.name} (gpu {s.gpus})" for s in slots),
    )
    return supervisor.run()
