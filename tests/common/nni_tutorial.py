"""What NNI's hello_nas tutorials (2.x and 3.0) share: their train and test loops, and the stand-in
for torchvision's MNIST (no download here, ever): scikit-learn's digits, upscaled to 1x28x28 and
normalized as the tutorials normalize MNIST, so their models run unchanged. ``limit`` keeps a
test's epochs short."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from retia.datasets import DigitsDataset


class DigitsAsMNIST(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, train: bool = True, limit: int | None = None) -> None:
        digits = DigitsDataset("train" if train else "val", flatten=False)
        images = F.interpolate(digits.x, size=(28, 28), mode="bilinear", align_corners=False)
        self.x = ((images - 0.1307) / 0.3081)[:limit]
        self.y = digits.y[:limit]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def train_epoch(model: Any, device: Any, train_loader: Any, optimizer: Any) -> None:
    model.train()
    for data, target in train_loader:
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        loss = F.nll_loss(model(data), target)
        loss.backward()
        optimizer.step()


def test_epoch(model: Any, device: Any, test_loader: Any) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            correct += model(data).argmax(dim=1).eq(target).sum().item()
    return 100.0 * correct / len(test_loader.dataset)
