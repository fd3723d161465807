"""Lightning's ``configure_optimizers`` read once: its optimizers, its schedulers and when to step them.

For modules retia drives itself (manual optimization: a one-shot strategy's, a pack's), which
step the user's optimizers and schedulers as Lightning's automatic optimization would.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from .errors import ConfigError

__all__ = ["Schedule", "split_optimizers", "step_schedules", "fusable", "FusedStep", "clear_gradients"]


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


_FUSABLE: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
_PLAIN = (type(None), bool, int, float, str)


def fusable(optimizer: torch.optim.Optimizer) -> bool:
    """Whether :class:`FusedStep` may step ``optimizer`` with others: torch's own Adam, AdamW or
    SGD (not a subclass) with plain-number settings, no step hooks, and none of the fused,
    capturable or differentiable implementations."""
    hooked = optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
    if type(optimizer) not in _FUSABLE or hooked:
        return False
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("capturable") or group.get("differentiable"):
            return False
        for name, value in group.items():
            values = value if isinstance(value, tuple) else (value,)
            if name != "params" and not all(isinstance(v, _PLAIN) for v in values):
                return False  # (a tensor learning rate does not take the foreach path)
    return True


def clear_gradients(optimizer: torch.optim.Optimizer) -> None:
    """What torch's own ``zero_grad()`` does (every gradient set to None), without its per-call
    overhead (20 us against 2 for a small model): for :func:`fusable` optimizers, whose
    ``zero_grad`` is torch's."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None


class FusedStep:
    """:func:`fusable` optimizers of independent parameters (a pack's candidates') stepped as one
    multi-tensor (foreach) step per kind and settings: the arithmetic of each one's own step,
    dispatched once for all (a small model's single-tensor Adam step costs more than its backward
    on CPU). Each optimizer keeps its own param groups and state, read afresh at every step; an
    LR scheduler does not see it stepped (torch's check warns): what has one steps on its own."""

    def __init__(self) -> None:
        self._steppers: dict[type[torch.optim.Optimizer], torch.optim.Optimizer] = {}

    def step(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        groups: dict[type[torch.optim.Optimizer], dict[tuple[Any, ...], dict[str, Any]]] = {}
        states: dict[type[torch.optim.Optimizer], _OwnState] = {}
        for optimizer in optimizers:
            kind = type(optimizer)
            merged = groups.setdefault(kind, {})
            owners = states.setdefault(kind, _OwnState()).owners
            for group in optimizer.param_groups:
                key = tuple((name, value) for name, value in group.items() if name != "params")
                into = merged.get(key)
                if into is None:
                    into = merged[key] = {**group, "params": [], "foreach": True}
                for param in group["params"]:
                    if param.grad is not None:
                        into["params"].append(param)
                        owners[param] = optimizer
        for kind, merged in groups.items():
            param_groups = [group for group in merged.values() if group["params"]]
            if not param_groups:
                continue
            stepper = self._steppers.get(kind)
            if stepper is None:
                stepper = self._steppers[kind] = cast(Any, kind)(param_groups)
            else:
                stepper.param_groups = param_groups
            stepper.state = states[kind]
            stepper.step()


class _OwnState(defaultdict[torch.Tensor, Any]):
    """A stepper's state: each parameter's entry is its own optimizer's (made there, as its own
    step would make it, only when the step asks for it)."""

    def __init__(self) -> None:
        super().__init__(dict)
        self.owners: dict[torch.Tensor, torch.optim.Optimizer] = {}

    def __missing__(self, param: torch.Tensor) -> Any:
        return self.owners[param].state[param]
