"""The dashboard tests' small real experiment: a six-architecture space and a fit that reports a curve,
prints to its log, fails for one architecture and exports model.onnx for another."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

import retia.nn as nn
from retia import report_final_result, report_intermediate_result

FAILING = {"width": 4, "act": "tanh"}  # the architecture whose fit raises
EXPORTING = {"width": 16, "act": "relu"}  # the one that writes model.onnx


class TinySpace(nn.ModelSpace):
    """64 pixels -> width -> activation -> 10 classes: 3 x 2 architectures."""

    def __init__(self) -> None:
        super().__init__()
        width = nn.ValueChoice([4, 8, 16], label="width")
        self.stem = nn.Linear(64, width)
        self.act = nn.LayerChoice(OrderedDict(relu=nn.ReLU(), tanh=nn.Tanh()), label="act")
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.act(self.stem(x)))
        return out


def score_of(arch: dict[str, Any]) -> float:
    """The known final metric of an architecture (its curve rises to it)."""
    return float(arch["width"]) / 16 - (0.1 if arch["act"] == "tanh" else 0.0)


def dashboard_fit(model_cls: Any, steps: int = 3) -> None:
    """Reports ``steps`` intermediate results and a final one; prints a marker line to trial.log."""
    model = model_cls()
    arch = dict(model.frozen_arch)
    print(f"dashboard-fit training {arch['width']}-{arch['act']}", flush=True)
    if arch == FAILING:
        raise RuntimeError("dashboard test: this architecture fails on purpose")
    score = score_of(arch)
    for step in range(1, steps + 1):
        report_intermediate_result(score * step / steps)
    if arch == EXPORTING:
        out = Path(os.environ["RETIA_OUTPUT_DIR"]) / "model.onnx"
        torch.onnx.export(model.eval(), (torch.randn(2, 64),), out, dynamo=False)
    report_final_result(score)
