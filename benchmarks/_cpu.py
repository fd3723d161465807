"""CPU per process from /proc: what the dispatch benchmark divides by the trial count."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds of the process and its reaped children); (0, 0.0) once it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0.0
    return int(fields[1]), sum(int(f) for f in fields[11:15]) / _TICK


def _descendants(root: int) -> list[int]:
    parents = {int(d): proc_stat(int(d))[0] for d in os.listdir("/proc") if d.isdigit()}
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


@dataclass
class CpuSplit:
    """CPU seconds per trial: this client process, the dispatcher, the agents, their trial processes."""

    client: float = 0.0
    dispatcher: float = 0.0
    agents: float = 0.0
    trials: float = 0.0

    def cell(self) -> str:
        total = self.client + self.dispatcher + self.agents + self.trials
        parts = (self.client, self.dispatcher, self.agents, self.trials)
        return f"{total * 1000:.1f} ms = " + " + ".join(f"{p * 1000:.1f}" for p in parts)

    def __add__(self, other: CpuSplit) -> CpuSplit:
        return CpuSplit(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))


class CpuMeter:
    """Snapshots the cluster's process tree; the difference of two snapshots, per trial."""

    def __init__(self, backend: Any) -> None:
        cluster = backend.cluster
        self.dispatcher = cluster.dispatcher.pid
        self.agents = [proc.pid for proc in cluster.worker_procs]

    def snapshot(self) -> CpuSplit:
        times = os.times()
        trials = sum(proc_stat(pid)[1] for agent in self.agents for pid in _descendants(agent))
        return CpuSplit(
            times.user + times.system,
            proc_stat(self.dispatcher)[1],
            sum(proc_stat(pid)[1] for pid in self.agents),
            trials,
        )

    @staticmethod
    def per_trial(before: CpuSplit, after: CpuSplit, n: int) -> CpuSplit:
        fields = ("client", "dispatcher", "agents", "trials")
        return CpuSplit(*(max(0.0, getattr(after, f) - getattr(before, f)) / n for f in fields))
