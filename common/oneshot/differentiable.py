"""DARTS and GumbelDARTS: architecture weights trained by gradient on validation batches.

Each label gets a vector of architecture parameters (alpha), and each edge of a Cell its own (the
paper's: one mixed op per node and earlier state, each node keeping its strongest edges). The
supernet's LayerChoices, InputChoices, Repeats and Cells mix their candidates by ``softmax(alpha)``
(DARTS, Liu et al. 2019) or by a Gumbel-softmax sample at a temperature that may anneal
(GumbelDARTS, as in SNAS / GDAS). Each step first moves alpha down the loss of a validation batch
(first order; or DARTS's second order, through one virtual weight step, its Hessian term by finite
differences), then the weights down the loss of a training batch. The architecture exported is the
largest alpha of every label, and the strongest edges of every Cell (``none`` never chosen).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import Arch
from ..errors import ConfigError
from ..nn.space import ModelSpace
from .base import Algorithm, OneShotStrategy, check_count, check_positive
from .supernet import relax

if TYPE_CHECKING:
    from .module import OneShotModule

__all__ = ["DARTS", "GumbelDARTS"]

Weights = Mapping[str, torch.Tensor]


class _Differentiable(Algorithm):
    needs_validation_batches = True

    def __init__(self, supernet: ModelSpace, strategy: DARTS) -> None:
        super().__init__(supernet, strategy.seed)
        self.config = strategy
        self.relaxation = relax(supernet, type(strategy).__name__, cell_edges=True)
        generator = torch.Generator().manual_seed(strategy.seed if strategy.seed is not None else 0)
        self.labels = list(self.relaxation.sizes)
        # NNI and the paper: small random alphas, so no candidate starts ahead of another
        self.alpha = nn.ParameterList(
            nn.Parameter(1e-3 * torch.randn(self.relaxation.sizes[label], generator=generator))
            for label in self.labels
        )

    def optimizers(self) -> list[torch.optim.Optimizer]:
        # the paper's architecture optimizer
        return [
            torch.optim.Adam(
                self.alpha.parameters(),
                lr=self.config.arc_learning_rate,
                betas=(0.5, 0.999),
                weight_decay=1e-3,
            )
        ]

    def weights(self) -> dict[str, torch.Tensor]:
        """The mixing weights of every label, differentiable in alpha."""
        return {label: F.softmax(alpha, dim=-1) for label, alpha in zip(self.labels, self.alpha)}

    def training_step(self, module: OneShotModule, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, Mapping) or set(batch) != {"train", "val"}:
            raise ConfigError(
                f"{type(self.config).__name__} trains on pairs of training and validation batches; "
                "its trial got another batch (the evaluator's train_dataloaders were replaced?)"
            )
        train, val = batch["train"], batch["val"]
        if module.current_epoch >= self.config.warmup_epochs:
            (architecture,) = module.own_optimizers()
            architecture.zero_grad()
            if self.config.unrolled:
                self._second_order_grad(module, train, val, batch_idx)
            else:
                self.relaxation.mix(self.weights())
                loss = module.user_loss(val, batch_idx)
                if loss is not None:
                    module.manual_backward(loss)
            architecture.step()
        self.relaxation.mix({label: w.detach() for label, w in self.weights().items()})
        loss = module.user_loss(train, batch_idx)
        if loss is not None:
            module.weight_step(loss)

    def _second_order_grad(self, module: OneShotModule, train: Any, val: Any, batch_idx: int) -> None:
        """DARTS's second-order gradient of alpha: grad_alpha L_val(w - xi grad_w L_train(w)), with
        the Hessian-vector term by central differences (eps = 0.01 / |grad_w' L_val|), xi the
        learning rate of the user's first optimizer."""
        weights = [p for p in module.user.parameters() if p.requires_grad]
        alphas = list(self.alpha)
        xi = float(module.weight_optimizers()[0].param_groups[0]["lr"])
        backup = [p.detach().clone() for p in weights]
        self.relaxation.mix({label: w.detach() for label, w in self.weights().items()})
        train_loss = _loss(module, train, batch_idx)
        grads = torch.autograd.grad(train_loss, weights, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(weights, grads):
                if g is not None:
                    p.sub_(xi * g)
        self.relaxation.mix(self.weights())
        val_loss = _loss(module, val, batch_idx)
        found = torch.autograd.grad(val_loss, [*alphas, *weights], allow_unused=True)
        d_alpha, d_weights = found[: len(alphas)], found[len(alphas) :]
        with torch.no_grad():
            for p, b in zip(weights, backup):
                p.copy_(b)
        vector = [torch.zeros_like(p) if g is None else g for p, g in zip(weights, d_weights)]
        norm = torch.cat([v.flatten() for v in vector]).norm()
        eps = 0.01 / float(norm) if float(norm) > 0 else 0.0
        hessian = [torch.zeros_like(a) for a in alphas]
        if eps:
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, v in zip(weights, vector):
                        p.add_(sign * eps * v)
                self.relaxation.mix(self.weights())  # a fresh graph from alpha for each probe
                probe = torch.autograd.grad(_loss(module, train, batch_idx), alphas, allow_unused=True)
                for h, g in zip(hessian, probe):
                    if g is not None:
                        h.add_(sign * g)
                with torch.no_grad():
                    for p, v in zip(weights, vector):
                        p.sub_(sign * eps * v)
        for alpha, d, h in zip(alphas, d_alpha, hessian):
            direct = torch.zeros_like(alpha) if d is None else d
            alpha.grad = direct - xi * h / (2 * eps) if eps else direct

    def fix_for_validation(self, module: OneShotModule) -> None:
        self.relaxation.mix(None)
        super().fix_for_validation(module)

    def export(self) -> Arch:
        return self.relaxation.export({label: a.detach() for label, a in zip(self.labels, self.alpha)})


def _loss(module: OneShotModule, batch: Any, batch_idx: int) -> torch.Tensor:
    loss = module.user_loss(batch, batch_idx)
    if loss is None:
        raise ConfigError(
            f"{type(module.user).__name__}.training_step returned None; second-order DARTS needs a "
            "loss on every batch"
        )
    return loss


class _Gumbel(_Differentiable):
    def __init__(self, supernet: ModelSpace, strategy: GumbelDARTS) -> None:
        super().__init__(supernet, strategy)
        self.gumbel = strategy
        self.temperature = strategy.gumbel_temperature
        self._generator = torch.Generator().manual_seed(strategy.seed if strategy.seed is not None else 0)

    def on_train_epoch_start(self, module: OneShotModule) -> None:
        config = self.gumbel
        if config.use_temp_anneal:
            epochs = max(int(module.trainer.max_epochs or 1), 1)
            progress = module.current_epoch / epochs
            start, end = config.gumbel_temperature, config.min_temp
            self.temperature = max(end, start - (start - end) * progress)

    def weights(self) -> dict[str, torch.Tensor]:
        out = {}
        for label, alpha in zip(self.labels, self.alpha):
            uniform = torch.rand(alpha.shape, generator=self._generator).clamp_(1e-10, 1.0).to(alpha.device)
            noise = -torch.log(-torch.log(uniform))
            out[label] = F.softmax((alpha + noise) / self.temperature, dim=-1)
        return out


class DARTS(OneShotStrategy):
    """Differentiable architecture search (Liu et al., ICLR 2019): see the module docstring.

    ``arc_learning_rate``: Adam's for alpha (betas 0.5, 0.999; weight decay 1e-3, the paper's);
    ``unrolled``: the second-order gradient (one virtual SGD step at the user's learning rate);
    ``warmup_epochs``: epochs training only the weights first.
    """

    def __init__(
        self,
        *,
        arc_learning_rate: float = 3e-4,
        unrolled: bool = False,
        warmup_epochs: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        self.arc_learning_rate = check_positive("arc_learning_rate", arc_learning_rate)
        self.unrolled = bool(unrolled)
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs, 0)

    def algorithm(self, supernet: ModelSpace) -> Algorithm:
        return _Differentiable(supernet, self)


class GumbelDARTS(DARTS):
    """DARTS mixing by Gumbel-softmax samples of alpha (SNAS, Xie et al. 2019): each step a noisy,
    nearly one-hot mixture at ``gumbel_temperature``, annealed linearly to ``min_temp`` over the
    epochs with ``use_temp_anneal``."""

    def __init__(
        self,
        *,
        gumbel_temperature: float = 1.0,
        use_temp_anneal: bool = False,
        min_temp: float = 0.33,
        arc_learning_rate: float = 3e-4,
        warmup_epochs: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(arc_learning_rate=arc_learning_rate, warmup_epochs=warmup_epochs, seed=seed)
        self.gumbel_temperature = check_positive("gumbel_temperature", gumbel_temperature)
        self.use_temp_anneal = bool(use_temp_anneal)
        self.min_temp = check_positive("min_temp", min_temp)

    def algorithm(self, supernet: ModelSpace) -> Algorithm:
        return _Gumbel(supernet, self)
