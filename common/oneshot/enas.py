"""ENAS (Pham et al., ICML 2018): an RL controller samples the paths of a shared supernet.

A small LSTM steps over the supernet's labels, one softmax head per label sized by its options
(as NNI's ReinforceController); each training step trains the weights of one sampled path on the
training batch, then samples another path, scores it with the user's ``validation_step`` on the
validation batch, and moves the controller by REINFORCE against a moving-average baseline, with
an entropy bonus in the reward. The path is activated, so any label kind works (a width inside a
layer too). The architecture exported is the controller's greedy (argmax) choice.
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

if TYPE_CHECKING:
    from .module import OneShotModule

__all__ = ["ENAS", "ReinforceController", "reward_of"]


class ReinforceController(nn.Module):
    """An LSTM that picks one option per label in turn, each choice fed back as the next input."""

    def __init__(self, sizes: Mapping[str, int], lstm_size: int = 64, tanh_constant: float = 1.5) -> None:
        super().__init__()
        self.labels = list(sizes)
        self.tanh_constant = tanh_constant
        self.start = nn.Parameter(torch.zeros(1, lstm_size))
        self.lstm = nn.LSTMCell(lstm_size, lstm_size)
        self.heads = nn.ModuleList(nn.Linear(lstm_size, sizes[label], bias=False) for label in self.labels)
        self.embeddings = nn.ModuleList(nn.Embedding(sizes[label], lstm_size) for label in self.labels)
        for parameter in self.parameters():  # the paper's: near-uniform choices at first
            nn.init.uniform_(parameter, -0.1, 0.1)

    def forward(
        self, greedy: bool = False, generator: torch.Generator | None = None
    ) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
        """Option indices by label, the sum of their log-probabilities and of the heads' entropies."""
        x = self.start
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        chosen: dict[str, int] = {}
        log_prob = self.start.new_zeros(())
        entropy = self.start.new_zeros(())
        for label, head, embedding in zip(self.labels, self.heads, self.embeddings):
            state = self.lstm(x, state)
            logits = self.tanh_constant * torch.tanh(head(state[0]))[0]
            probs = F.softmax(logits, dim=-1)
            if greedy:
                index = int(torch.argmax(probs))
            else:
                index = int(torch.multinomial(probs.detach().cpu(), 1, generator=generator))
            log_probs = F.log_softmax(logits, dim=-1)
            log_prob = log_prob + log_probs[index]
            entropy = entropy - (probs * log_probs).sum()
            chosen[label] = index
            x = embedding(torch.tensor([index], device=logits.device))
        return chosen, log_prob, entropy


def reward_of(logged: Mapping[str, float], name: str | None, default_metric: str | None) -> float:
    """The reward among the metrics the user's ``validation_step`` logged: the single one, else
    ``name``, else the module's default metric, else ``'default'``."""
    if len(logged) == 1 and name is None:
        return next(iter(logged.values()))
    for candidate in [name] if name is not None else [default_metric, "default"]:
        if candidate is not None and candidate in logged:
            return logged[candidate]
    raise ConfigError(
        f"ENAS takes its reward from the metric the validation_step logs; it logged "
        f"{sorted(logged) or 'nothing'}"
        + (f", not reward_metric_name={name!r}" if name is not None else "")
        + ": pass ENAS(reward_metric_name=...) naming one of them (higher is better)"
    )


class _Enas(Algorithm):
    needs_validation_batches = True
    baseline: torch.Tensor  # a buffer: checkpointed with the controller

    def __init__(self, supernet: ModelSpace, strategy: ENAS) -> None:
        super().__init__(supernet, strategy.seed)
        self.config = strategy
        seed = strategy.seed if strategy.seed is not None else 0
        with torch.random.fork_rng(devices=[]):  # the controller's initial weights, by the seed
            torch.manual_seed(seed)
            self.controller = ReinforceController(
                {label: len(spec.options) for label, spec in self.specs.items()}, strategy.lstm_size
            )
        self._generator = torch.Generator().manual_seed(seed)
        self.register_buffer("baseline", torch.zeros(()))
        self._samples = 0

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.controller.parameters(), lr=self.config.ctrl_learning_rate)]

    def _arch(self, indices: Mapping[str, int]) -> Arch:
        return {label: self.specs[label].options[i] for label, i in indices.items()}

    def _sample(self) -> tuple[Arch, torch.Tensor, torch.Tensor]:
        """A valid architecture from the controller (resampled while the space's constraints refuse it)."""
        for _ in range(100):
            indices, log_prob, entropy = self.controller(generator=self._generator)
            arch = self._arch(indices)
            try:
                self.supernet.validate(arch)
            except Exception:
                continue
            return arch, log_prob, entropy
        raise ConfigError(
            "the ENAS controller drew no valid architecture in 100 tries: check the constraints"
        )

    def training_step(self, module: OneShotModule, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, Mapping) or set(batch) != {"train", "val"}:
            raise ConfigError(
                "ENAS trains on pairs of training and validation batches; its trial got another batch"
            )
        with torch.no_grad():
            arch, _, _ = self._sample()
        self.supernet.activate(arch)
        loss = module.user_loss(batch["train"], batch_idx)
        if loss is not None:
            module.weight_step(loss)
        if module.current_epoch < self.config.warmup_epochs:
            return
        (optimizer,) = module.own_optimizers()
        for _ in range(self.config.ctrl_steps):
            arch, log_prob, entropy = self._sample()
            self.supernet.activate(arch)
            logged = module.user_validation(batch["val"], batch_idx)
            reward = reward_of(logged, self.config.reward_metric_name, module.default_metric)
            reward += self.config.entropy_weight * float(entropy.detach())
            decay = self.config.baseline_decay
            if self._samples == 0:  # not a zero baseline: the first advantage would be the whole reward
                self.baseline.fill_(reward)
            self.baseline.mul_(decay).add_((1 - decay) * reward)
            ctrl_loss = -log_prob * (reward - float(self.baseline))
            module.manual_backward(ctrl_loss / self.config.ctrl_steps_aggregate)
            self._samples += 1
            if self._samples % self.config.ctrl_steps_aggregate == 0:
                if self.config.ctrl_grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.controller.parameters(), self.config.ctrl_grad_clip)
                optimizer.step()
                optimizer.zero_grad()

    def export(self) -> Arch:
        with torch.no_grad():
            indices, _, _ = self.controller(greedy=True)
        return self._arch(indices)


class ENAS(OneShotStrategy):
    """Efficient NAS by parameter sharing (Pham et al., 2018): see the module docstring.

    ``reward_metric_name``: the validation metric rewarded (higher is better) when the module logs
    several; ``ctrl_learning_rate``: Adam's for the controller (3.5e-4, the paper's);
    ``entropy_weight``: the entropy bonus; ``baseline_decay``: the moving average's decay;
    ``ctrl_steps``: controller samples per training step; ``ctrl_steps_aggregate``: samples whose
    gradients are summed into one controller step; ``ctrl_grad_clip``: the controller's gradient
    norm clip (0: none); ``warmup_epochs``: epochs training only the weights first.
    """

    def __init__(
        self,
        *,
        reward_metric_name: str | None = None,
        ctrl_learning_rate: float = 3.5e-4,
        entropy_weight: float = 1e-4,
        baseline_decay: float = 0.999,
        ctrl_steps: int = 1,
        ctrl_steps_aggregate: int = 20,
        ctrl_grad_clip: float = 0.0,
        lstm_size: int = 64,
        warmup_epochs: int = 0,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        if not 0 <= baseline_decay < 1:
            raise ConfigError(f"baseline_decay must be in [0, 1), got {baseline_decay!r}")
        self.reward_metric_name = reward_metric_name
        self.ctrl_learning_rate = check_positive("ctrl_learning_rate", ctrl_learning_rate)
        self.entropy_weight = float(entropy_weight)
        self.baseline_decay = float(baseline_decay)
        self.ctrl_steps = check_count("ctrl_steps", ctrl_steps, 1)
        self.ctrl_steps_aggregate = check_count("ctrl_steps_aggregate", ctrl_steps_aggregate, 1)
        self.ctrl_grad_clip = float(ctrl_grad_clip)
        self.lstm_size = check_count("lstm_size", lstm_size, 1)
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs, 0)

    def algorithm(self, supernet: ModelSpace) -> Algorithm:
        return _Enas(supernet, self)
