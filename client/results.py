"""An experiment's own record on disk: what was asked, what came back, readable after the end.

``<dir>/experiment.json`` holds the settings; ``<dir>/trials.jsonl`` is append-only: a
``submit`` line is written before a trial is submitted (so a crashed process can find it
again by its deterministic id) and a ``result`` line once it has finished. ``space.bin``,
``evaluator.bin`` and ``strategy.bin`` are ``retia.dump`` bytes for resuming.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retia.arch import Arch
from retia.errors import ConfigError
from retia.protocol import DeviceFacts, TrialState
from retia.reporting import Metric, default_value

__all__ = ["TrialResult", "ExperimentSettings", "ExperimentRecord", "scored"]


@dataclass
class TrialResult:
    """One trial of an experiment, as the experiment saw it."""

    key: int
    trial_id: str
    arch: Arch
    state: str = "QUEUED"
    final: Metric | None = None
    intermediates: list[Metric] = field(default_factory=list)
    attempt: int = 0
    reason: str = ""
    submitted: float = 0.0
    finished: float = 0.0
    output_dir: str = ""  # where its artefacts landed (model.onnx, trial.log)
    seed: int | None = None  # what it ran under (None: recorded by a retia before trial seeds)
    devices: DeviceFacts | None = None  # its GPUs and what they did (Trial.devices)

    @property
    def score(self) -> float | None:
        """The 'default' value of the final result, as reported (direction not applied)."""
        return None if self.final is None else default_value(self.final)


def _devices(recorded: Any) -> DeviceFacts | None:
    """A result line's device facts (None when it has none, or they are not what retia writes)."""
    if not isinstance(recorded, dict):
        return None
    try:
        return DeviceFacts(**recorded)
    except TypeError:
        return None


def scored(results: Iterable[TrialResult]) -> list[tuple[float, TrialResult]]:
    """``(score, result)`` for each succeeded trial with a score, in the order given."""
    out = []
    for r in results:
        score = r.score
        if r.state == TrialState.SUCCEEDED.value and score is not None:
            out.append((score, r))
    return out


@dataclass(frozen=True)
class ExperimentSettings:
    experiment_id: str
    client_id: str
    direction: str
    max_trials: int
    concurrency: int
    address: str | None
    created: float
    seed: int | None = None  # the experiment's (Experiment(seed=)): its trials' seeds follow from it


class ExperimentRecord:
    """Reads and appends an experiment directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.results: dict[int, TrialResult] = {}

    @property
    def settings_file(self) -> Path:
        return self.path / "experiment.json"

    @property
    def trials_file(self) -> Path:
        return self.path / "trials.jsonl"

    def create(self, settings: ExperimentSettings, blobs: dict[str, bytes]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for name, data in blobs.items():
            (self.path / name).write_bytes(data)
        self.save_settings(settings)
        self.trials_file.touch()

    def save_settings(self, settings: ExperimentSettings) -> None:
        tmp = self.settings_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(settings), indent=2))
        os.replace(tmp, self.settings_file)

    def settings(self) -> ExperimentSettings:
        if not self.settings_file.exists():
            raise ConfigError(f"{self.path} is not an experiment directory (no experiment.json)")
        return ExperimentSettings(**json.loads(self.settings_file.read_text()))

    def blob(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def load(self) -> dict[int, TrialResult]:
        """Replay trials.jsonl; a torn last line (a crash mid-write) is ignored."""
        self.results = {}
        for entry in self._lines():
            if entry["event"] == "submit":
                self.results[entry["key"]] = TrialResult(
                    entry["key"],
                    entry["trial_id"],
                    entry["arch"],
                    submitted=entry["time"],
                    seed=entry.get("seed"),
                )
            elif entry["event"] == "result" and entry["key"] in self.results:
                result = self.results[entry["key"]]
                result.state, result.final, result.intermediates = (
                    entry["state"],
                    entry["final"],
                    entry["intermediates"],
                )
                result.attempt, result.reason, result.finished = (
                    entry["attempt"],
                    entry["reason"],
                    entry["time"],
                )
                result.output_dir = entry.get("output_dir", "")
                result.devices = _devices(entry.get("devices"))
                result.arch = entry.get("arch", result.arch)  # a one-shot trial's: what it chose
        return self.results

    def append_submit(self, result: TrialResult) -> None:
        self.results[result.key] = result
        self._append(
            {
                "event": "submit",
                "key": result.key,
                "trial_id": result.trial_id,
                "arch": result.arch,
                "time": result.submitted,
                "seed": result.seed,
            }
        )

    def append_result(self, result: TrialResult) -> None:
        self._append(
            {
                "event": "result",
                "key": result.key,
                "trial_id": result.trial_id,
                "state": result.state,
                "final": result.final,
                "intermediates": result.intermediates,
                "attempt": result.attempt,
                "reason": result.reason,
                "time": result.finished or time.time(),
                "output_dir": result.output_dir,
                "arch": result.arch,
                "devices": None if result.devices is None else asdict(result.devices),
            }
        )

    def _append(self, entry: dict[str, Any]) -> None:
        with open(self.trials_file, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _lines(self) -> Iterator[dict[str, Any]]:
        if not self.trials_file.exists():
            return
        for line in self.trials_file.read_text().splitlines():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
