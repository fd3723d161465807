"""Lightning's ``configure_optimizers`` read once: its optimizers, its schedulers and when to step them.

For modules retia drives itself (manual optimization: a one-shot strategy's, a pack's), which
step the user's optimizers and schedulers as Lightning's automatic optimization would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["Schedule", "split_optimizers", "step_schedules"]


@dataclass
class Schedule:
    """A learning-rate scheduler and when to step it (Lightning's scheduler config, read once)."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None

    @classmethod
    def of(cls, config: Any) -> Schedule:
        if isinstance(config, Mapping):
            if "scheduler" not in config:
                raise ConfigError(
                    f"a scheduler config dict needs a 'scheduler' key, got keys {sorted(config)}"
                )
            interval = config.get("interval", "epoch")
            if interval not in ("epoch", "step"):
                raise ConfigError(f"a scheduler's interval must be 'epoch' or 'step', got {interval!r}")
            return cls(config["scheduler"], interval, int(config.get("frequency", 1)), config.get("monitor"))
        return cls(config)


def split_optimizers(config: Any) -> tuple[list[torch.optim.Optimizer], list[Schedule]]:
    """The optimizers and schedulers of any of ``configure_optimizers``'s return shapes: an
    optimizer; a list of them; ``(optimizers, schedulers)``; a dict with ``optimizer`` (and
    ``lr_scheduler``); a list of such dicts; None."""
    if config is None:
        return [], []
    if isinstance(config, torch.optim.Optimizer):
        return [config], []
    if isinstance(config, Mapping):
        if "optimizer" not in config:
            raise ConfigError(
                f"configure_optimizers returned a dict without 'optimizer' (keys {sorted(config)})"
            )
        scheduler = config.get("lr_scheduler")
        return [config["optimizer"]], [] if scheduler is None else [Schedule.of(scheduler)]
    if isinstance(config, (list, tuple)):
        items = list(config)
        if len(items) == 2 and all(isinstance(part, (list, tuple)) for part in items):
            optimizers = list(items[0])
            schedules = [Schedule.of(s) for s in items[1]]
            _check_optimizers(optimizers)
            return optimizers, schedules
        optimizers, schedules = [], []
        for item in items:
            opts, scheds = split_optimizers(item)
            optimizers += opts
            schedules += scheds
        _check_optimizers(optimizers)
        return optimizers, schedules
    raise ConfigError(
        "configure_optimizers must return an optimizer, a list of them, (optimizers, schedulers), a "
        f"dict with 'optimizer', a list of such dicts, or None; got {type(config).__name__}"
    )


def _check_optimizers(optimizers: Sequence[Any]) -> None:
    for optimizer in optimizers:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"configure_optimizers gave a {type(optimizer).__name__} where an optimizer was expected"
            )


def step_schedules(
    schedules: Sequence[Schedule],
    interval: str,
    count: int,
    monitored: Callable[[str | None], Any],
) -> None:
    """Step the schedulers of ``interval`` ("step" or "epoch") whose frequency divides ``count``
    (the global step, or the epochs done); ``monitored(name)`` gives a ReduceLROnPlateau the value
    it monitors (``schedule.monitor``, None: the module's default metric)."""
    for schedule in schedules:
        if schedule.interval != interval or count % schedule.frequency:
            continue
        if isinstance(schedule.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            schedule.scheduler.step(monitored(schedule.monitor))
        else:
            schedule.scheduler.step()
