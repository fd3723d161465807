"""The "Model Evaluator" page's examples (../shared/seed-model-evaluator.txt; NNI 2.x), written for these
tests from the page, with only the import lines changed (``nni`` -> ``retia.nni``) and MNIST replaced
by the digits (nni_tutorial.DigitsAsMNIST): a fit function with a traced DataLoader, an ONNX export
into ``$NNI_OUTPUT_DIR``, and the page's AutoEncoder, a LightningModule that reports for itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from nni_tutorial import DigitsAsMNIST, test_epoch, train_epoch

import retia.nni as nni
import retia.nni.retiarii.evaluator.pytorch.lightning as pl
import retia.nni.retiarii.nn.pytorch as nn
from retia.nni.retiarii import model_wrapper

__all__ = ["DigitsAsMNIST"]  # traced by the tests, as the page traces MNIST


class SingleModel(nn.Module):
    """A concrete model, as the page's ``SingleModel`` (no constructor arguments)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, 2)
        self.fc = nn.Linear(8 * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = F.log_softmax(self.fc(torch.flatten(F.relu(self.conv(x)), 1)), dim=1)
        return out


@model_wrapper
class ModelSpace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, nn.ValueChoice([4, 8]), 3, 2)
        self.fc = nn.Linear(self.conv.out_channels * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = F.log_softmax(self.fc(torch.flatten(F.relu(self.conv(x)), 1)), dim=1)
        return out


def fit(model_cls: Any, dataloader: Any) -> None:
    model = model_cls()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _epoch in range(2):
        train_epoch(model, "cpu", dataloader, optimizer)
        nni.report_intermediate_result(test_epoch(model, "cpu", dataloader))
    nni.report_final_result(test_epoch(model, "cpu", dataloader))


def fit_exporting_onnx(model_cls: Any) -> None:
    model = model_cls()
    onnx_path = Path(os.environ.get("NNI_OUTPUT_DIR", ".")) / "model.onnx"
    dummy_input = torch.randn(10, 1, 28, 28)
    torch.onnx.export(model, (dummy_input,), str(onnx_path))
    nni.report_final_result(onnx_path.stat().st_size)


@model_wrapper
class Encoder(nn.Module):
    """The part the page's AutoEncoder searches (``self.model``): 784 pixels to a 3-d embedding."""

    def __init__(self) -> None:
        super().__init__()
        width = nn.ValueChoice([16, 64])  # one decision, used by two layers
        self.net = nn.Sequential(nn.Linear(28 * 28, width), nn.ReLU())
        self.out = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.net(x))
        return out


class AutoEncoder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 28 * 28))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding: torch.Tensor = self.model(x)
        return embedding

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = x.view(x.size(0), -1)
        z = self.model(x)
        x_hat = self.decoder(z)
        loss = F.mse_loss(x_hat, x)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        x = x.view(x.size(0), -1)
        z = self.model(x)
        x_hat = self.decoder(z)
        loss = F.mse_loss(x_hat, x)
        self.log("val_loss", loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)

    def on_validation_epoch_end(self) -> None:
        nni.report_intermediate_result(self.trainer.callback_metrics["val_loss"].item())

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            nni.report_final_result(self.trainer.callback_metrics["val_loss"].item())
