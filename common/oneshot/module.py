"""The LightningModule a one-shot strategy trains: the user's module, wrapped, not rewritten.

It drives the optimizers itself (manual optimization): the user's ``configure_optimizers`` (any of
Lightning's return shapes) gives the weight optimizers and their schedulers, the strategy adds its
own (the architecture parameters', a controller's). The user's ``training_step`` computes every
loss the strategy needs, on training or validation batches; its ``validation_step`` scores the
architecture the strategy currently prefers. The user's hooks run at their usual moments, and
their ``self.log`` calls land as if the module were trained on its own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import pytorch_lightning as pl
import torch
from torch import nn

from ..errors import ConfigError
from ..optimizers import Schedule, split_optimizers, step_schedules
from ..reporting import Metric, Reporter, use_reporter

if TYPE_CHECKING:
    from .base import Algorithm

__all__ = ["OneShotModule"]

_log = logging.getLogger(__name__)


class _SetAside(Reporter):
    """Counts the reports of the user's module, and sends none (see ``OneShotModule.as_hook``)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def intermediate(self, value: Metric) -> None:
        self.count += 1

    def final(self, value: Metric) -> None:
        self.count += 1


class OneShotModule(pl.LightningModule):
    """The user's module (``self.user``, its supernet at ``self.user.model``) trained by ``algorithm``."""

    def __init__(self, user: pl.LightningModule, algorithm: Algorithm) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.user = user
        self.algorithm = algorithm
        self.default_metric: str | None = getattr(user, "default_metric", None)
        self._user_optimizers = 0
        self._schedules: list[Schedule] = []
        self._set_aside = _SetAside()  # what the user's module reports itself

    @property
    def supernet(self) -> nn.Module:
        return cast(nn.Module, self.user.model)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.user(*args, **kwargs)

    # ---- calling the user's module as Lightning would ----

    @contextlib.contextmanager
    def as_hook(self, name: str) -> Iterator[None]:
        """Run code of the user's module as Lightning's hook ``name`` (where its ``self.log`` goes).

        The module's own ``report_*`` calls (NNI's pattern) are set aside: the trial reports the
        metrics of the architecture the strategy prefers, with that architecture."""
        before = self.user._current_fx_name
        self.user._current_fx_name = name
        try:
            with use_reporter(self._set_aside):
                yield
        finally:
            self.user._current_fx_name = before

    def user_loss(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        """The user's ``training_step`` on ``batch``: its loss (None if it skipped the batch)."""
        with self.as_hook("training_step"):
            out = self.user.training_step(batch, batch_idx)
        if out is None or isinstance(out, torch.Tensor):
            return out
        if isinstance(out, Mapping) and isinstance(out.get("loss"), torch.Tensor):
            loss: torch.Tensor = out["loss"]
            return loss
        raise ConfigError(
            f"{type(self.user).__name__}.training_step returned a {type(out).__name__}; a one-shot "
            "strategy needs the loss: a tensor, a dict with 'loss', or None to skip the batch"
        )

    def user_validation(self, batch: Any, batch_idx: int) -> dict[str, float]:
        """The user's ``validation_step`` on ``batch``, returning what it logged (a reward for ENAS)."""
        logged: dict[str, float] = {}
        user = self.user
        original = user.log

        def capture(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            compute = getattr(value, "compute", None)
            number = compute() if callable(compute) else value
            logged[name] = float(number)

        user.log = capture  # type: ignore[method-assign]
        try:
            with self.as_hook("validation_step"), torch.no_grad():
                user.validation_step(batch, batch_idx)
        finally:
            del user.log
            assert user.log == original
        return logged

    # ---- optimizers ----

    def configure_optimizers(self) -> Any:
        with self.as_hook("configure_optimizers"):
            optimizers, self._schedules = split_optimizers(self.user.configure_optimizers())
        if not optimizers:
            raise ConfigError(
                f"{type(self.user).__name__}.configure_optimizers returned no optimizer: a one-shot "
                "strategy trains the supernet's weights with it"
            )
        self._user_optimizers = len(optimizers)
        return [*optimizers, *self.algorithm.optimizers()]

    def weight_optimizers(self) -> list[Any]:
        return self._all_optimizers()[: self._user_optimizers]

    def own_optimizers(self) -> list[Any]:
        """The strategy's own optimizers, in the order ``algorithm.optimizers()`` gave them."""
        return self._all_optimizers()[self._user_optimizers :]

    def _all_optimizers(self) -> list[Any]:
        optimizers = self.optimizers()
        return list(optimizers) if isinstance(optimizers, list) else [optimizers]

    def weight_step(self, loss: torch.Tensor, *, clear: bool = True) -> None:
        """Backward ``loss`` into the weights and step the user's optimizers."""
        optimizers = self.weight_optimizers()
        if clear:
            for optimizer in optimizers:
                optimizer.zero_grad()
        self.manual_backward(loss)
        for optimizer in optimizers:
            optimizer.step()
        self._step_schedules("step")

    def _step_schedules(self, interval: str) -> None:
        count = self.trainer.global_step if interval == "step" else self.current_epoch + 1
        step_schedules(self._schedules, interval, count, self._monitored)

    def _monitored(self, name: str | None) -> Any:
        monitor = name or self.default_metric
        value = self.trainer.callback_metrics.get(monitor or "")
        if value is None:
            raise ConfigError(
                f"ReduceLROnPlateau monitors {monitor!r}, which was not logged; logged: "
                f"{sorted(self.trainer.callback_metrics)}"
            )
        return value

    # ---- Lightning's steps and hooks ----

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.algorithm.training_step(self, batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        with self.as_hook("validation_step"):
            self.user.validation_step(batch, batch_idx)

    def on_train_epoch_start(self) -> None:
        self.algorithm.on_train_epoch_start(self)
        self._user_hook("on_train_epoch_start")

    def on_train_epoch_end(self) -> None:
        self._user_hook("on_train_epoch_end")
        self._step_schedules("epoch")

    def on_validation_epoch_start(self) -> None:
        self.algorithm.fix_for_validation(self)
        self._user_hook("on_validation_epoch_start")

    def on_validation_epoch_end(self) -> None:
        self._user_hook("on_validation_epoch_end")
        if not self.trainer.sanity_checking:
            for name, value in self.algorithm.arch_metrics().items():
                self.log(name, value)
        self.algorithm.after_validation(self)

    def on_fit_start(self) -> None:
        self._user_hook("on_fit_start")

    def on_fit_end(self) -> None:
        self._user_hook("on_fit_end")

    def on_train_start(self) -> None:
        self._user_hook("on_train_start")

    def on_train_end(self) -> None:
        self._user_hook("on_train_end")

    def on_validation_start(self) -> None:
        self._user_hook("on_validation_start")

    def on_validation_end(self) -> None:
        self._user_hook("on_validation_end")

    def teardown(self, stage: str) -> None:
        with self.as_hook("teardown"):
            self.user.teardown(stage)
        if self._set_aside.count:
            _log.info(
                "%s reported for itself (%d report(s)); under a one-shot strategy the trial reports "
                "the metrics of the architecture it prefers instead",
                type(self.user).__name__,
                self._set_aside.count,
            )

    def _user_hook(self, name: str) -> None:
        hook: Callable[[], None] = getattr(self.user, name)
        with self.as_hook(name):
            hook()
