"""SPOS's second stage: subnets that inherit the trained supernet's weights, only validated.

``InheritedWeights(evaluator, weights)`` scores each model a multi-trial strategy samples with
the supernet's weights (cut to its shapes by ``original_state_dict_hooks``) on the evaluator's
validation data, without training it: each candidate is a trial, spread over every worker, and
the weights travel to each worker once, as blobs. ``supernet_weights(experiment)`` reads them
from a one-shot experiment's trial.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch

from ..errors import ConfigError
from ..evaluator import Evaluator
from ..lightning import Lightning
from ..nn.space import original_state_dict_hooks

__all__ = ["SUPERNET_FILE", "InheritedWeights", "supernet_weights"]

SUPERNET_FILE = "supernet.pt"  # the supernet's state dict, in a one-shot trial's output directory


class InheritedWeights(Evaluator):
    """Validate each model with ``weights`` (a supernet's state dict) through ``evaluator``'s module,
    metrics and validation data; nothing is trained."""

    def __init__(self, evaluator: Evaluator, weights: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(evaluator, Lightning):
            raise ConfigError(
                "InheritedWeights validates through a Lightning evaluator (Classification, Regression "
                f"or Lightning with your module), got {type(evaluator).__name__}"
            )
        if evaluator.val_dataloaders is None:
            raise ConfigError("InheritedWeights scores each subnet on validation data: give val_dataloaders=")
        if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise ConfigError(
                "weights must be a supernet's state dict {name: tensor}: see supernet_weights()"
            )
        self.evaluator: Lightning = evaluator
        self.weights = dict(weights)
        self._record(evaluator, self.weights)

    @property
    def direction(self) -> str:  # type: ignore[override]
        return self.evaluator.direction

    def _run(self, model_factory: Callable[[], Any]) -> None:
        model = model_factory()
        with original_state_dict_hooks(model):
            model.load_state_dict(self.weights)
        module = copy.deepcopy(self.evaluator.module)
        module.set_model(model)
        self.evaluator._fit_module(module, validate_only=True)

    def __repr__(self) -> str:
        return f"InheritedWeights({self.evaluator!r}, {len(self.weights)} tensors)"


def supernet_weights(experiment: Any) -> dict[str, torch.Tensor]:
    """The trained supernet's state dict from a finished one-shot experiment (on this machine: its
    trial's files, a local cluster's or the head node's)."""
    done = [r for r in experiment.results if r.state == "SUCCEEDED" and r.output_dir]
    if not done:
        raise ConfigError(f"experiment {experiment.id} has no finished one-shot trial with files")
    path = Path(done[-1].output_dir) / SUPERNET_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing: was the experiment run with a one-shot strategy?")
    return cast(dict[str, torch.Tensor], torch.load(path, weights_only=True))
