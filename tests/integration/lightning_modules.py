"""Lightning modules for tests whose trials run on workers (importable there as ``tests.integration``):
NNI's DARTS tutorial pattern, and a callback that records what a fit used."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytorch_lightning
import torch

import retia.lightning as pl


class DartsClassificationModule(pl.ClassificationModule):
    """NNI's DARTS tutorial's module: attributes set before super().__init__, hparams read in
    configure_optimizers (SGD with momentum and a cosine schedule), its own training_step."""

    def __init__(
        self,
        learning_rate: float = 0.001,
        weight_decay: float = 0.0,
        auxiliary_loss_weight: float = 0.4,
        max_epochs: int = 600,
    ) -> None:
        self.auxiliary_loss_weight = auxiliary_loss_weight
        self.max_epochs = max_epochs
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, export_onnx=False)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            self.parameters(),
            momentum=0.9,
            lr=self.hparams.learning_rate,  # type: ignore[attr-defined]  # NNI's spelling (an AttributeDict)
            weight_decay=self.hparams.weight_decay,  # type: ignore[attr-defined]
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.max_epochs, eta_min=1e-3)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        y_hat = self(x)
        loss: torch.Tensor = self.criterion(y_hat, y)
        self.log("train_loss", loss, prog_bar=True)
        for name, metric in self.metrics.items():
            self.log("train_" + name, metric(y_hat, y), prog_bar=True)
        return loss


class RecordFit(pytorch_lightning.Callback):
    """Writes what the fit used (optimizer, schedulers, logged names) into the trial's directory."""

    def on_fit_end(self, trainer: pytorch_lightning.Trainer, pl_module: Any) -> None:
        record = {
            "optimizer": type(trainer.optimizers[0]).__name__,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "schedulers": len(trainer.lr_scheduler_configs),
            "metrics": sorted(trainer.callback_metrics),
        }
        Path(os.environ["RETIA_OUTPUT_DIR"], "fit.json").write_text(json.dumps(record))
