"""ProxylessNAS (Cai et al., ICLR 2019), the latency-free variant: binarized paths.

Each label gets architecture parameters alpha. Every step samples one path by ``softmax(alpha)``
(binary gates), trains the weights of that path alone on the training batch, then samples gates
again and moves alpha on the validation batch by the paper's BinaryConnect-style estimate:
``dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)``, ``dL/dg_j`` from the supernet mixing its
candidates by the gates (so each candidate runs, as in the paper). The architecture exported is
the largest alpha of every label. Labels the DARTS relaxation cannot mix are refused up front.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import Arch
from ..errors import ConfigError
from ..nn.choices import InputChoice
from ..nn.space import ModelSpace
from .base import Algorithm, OneShotStrategy, check_count, check_positive
from .supernet import relax

if TYPE_CHECKING:
    from .module import OneShotModule

__all__ = ["Proxyless"]


class _Binarized(Algorithm):
    needs_validation_batches = True

    def __init__(self, supernet: ModelSpace, strategy: Proxyless) -> None:
        super().__init__(supernet, strategy.seed)
        self.config = strategy
        self.relaxation = relax(supernet, "Proxyless")
        several = [
            label
            for label, d in self.relaxation.decisions.items()
            if isinstance(d.modules[0], InputChoice) and d.modules[0].n_chosen > 1
        ]
        if several:
            raise ConfigError(
                f"Proxyless samples one path per choice; it cannot gate {', '.join(map(repr, several))} "
                "(an InputChoice choosing several inputs). Search such a space with DARTS or ENAS"
            )
        self.labels = list(self.relaxation.sizes)
        self.alpha = nn.ParameterList(
            nn.Parameter(torch.zeros(self.relaxation.sizes[label])) for label in self.labels
        )
        self._generator = torch.Generator().manual_seed(strategy.seed if strategy.seed is not None else 0)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(
                self.alpha.parameters(), lr=self.config.arc_learning_rate, betas=(0.0, 0.999), eps=1e-8
            )
        ]

    def _gates(self) -> dict[str, torch.Tensor]:
        """One-hot gates drawn by softmax(alpha), one per label."""
        gates = {}
        for label, alpha in zip(self.labels, self.alpha):
            probs = F.softmax(alpha.detach(), dim=-1).cpu()
            index = int(torch.multinomial(probs, 1, generator=self._generator))
            gates[label] = F.one_hot(torch.tensor(index), len(probs)).to(alpha)
        return gates

    def training_step(self, module: OneShotModule, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, Mapping) or set(batch) != {"train", "val"}:
            raise ConfigError(
                "Proxyless trains on pairs of training and validation batches; its trial got another batch"
            )
        # the weights of one sampled path
        gates = self._gates()
        self.relaxation.mix(None)
        self.supernet.activate(self.relaxation.export(gates))
        loss = module.user_loss(batch["train"], batch_idx)
        if loss is not None:
            module.weight_step(loss)
        if module.current_epoch < self.config.warmup_epochs:
            return
        # alpha, by the gradient of the loss in the binary gates
        gates = {label: g.clone().requires_grad_(True) for label, g in self._gates().items()}
        self.relaxation.mix(gates)
        try:
            loss = module.user_loss(batch["val"], batch_idx)
            if loss is None:
                return
            d_gates = torch.autograd.grad(loss, [gates[label] for label in self.labels], allow_unused=True)
        finally:
            self.relaxation.mix(None)
        (optimizer,) = module.own_optimizers()
        optimizer.zero_grad()
        for alpha, d in zip(self.alpha, d_gates):
            if d is None:
                continue
            p = F.softmax(alpha.detach(), dim=-1)
            # dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)
            alpha.grad = d * p - p * (d * p).sum()
        optimizer.step()

    def fix_for_validation(self, module: OneShotModule) -> None:
        self.relaxation.mix(None)
        super().fix_for_validation(module)

    def export(self) -> Arch:
        return self.relaxation.export({label: a.detach() for label, a in zip(self.labels, self.alpha)})


class Proxyless(OneShotStrategy):
    """ProxylessNAS without the latency loss: see the module docstring.

    ``arc_learning_rate``: Adam's for alpha (the paper's 1e-3, betas 0 and 0.999);
    ``warmup_epochs``: epochs training only the weights first.
    """

    def __init__(
        self, *, arc_learning_rate: float = 1e-3, warmup_epochs: int = 0, seed: int | None = None
    ) -> None:
        super().__init__(seed=seed)
        self.arc_learning_rate = check_positive("arc_learning_rate", arc_learning_rate)
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs, 0)

    def algorithm(self, supernet: ModelSpace) -> Algorithm:
        return _Binarized(supernet, self)
