"""Small real data sets shipped with scikit-learn, as torch Datasets (no downloads, ever).

Build them with ``retia.trace`` (or use them inside traced DataLoaders) and they cross the
wire as a recipe: the worker re-reads the data from its own scikit-learn install.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["DigitsDataset", "DiabetesDataset"]

Split = Literal["train", "val", "all"]


def _split_indices(n: int, split: Split, val_fraction: float, seed: int) -> np.ndarray:
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    if split == "all":
        return np.arange(n)
    return order[n_val:] if split == "train" else order[:n_val]


class DigitsDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """scikit-learn's 1,797 8x8 handwritten digits; ``flatten=False`` gives 1x8x8 images."""

    def __init__(
        self, split: Split = "train", val_fraction: float = 0.2, seed: int = 0, flatten: bool = True
    ) -> None:
        from sklearn.datasets import load_digits

        data = load_digits()
        idx = _split_indices(len(data.target), split, val_fraction, seed)
        x = torch.tensor(data.data[idx] / 16.0, dtype=torch.float32)
        self.x = x if flatten else x.view(-1, 1, 8, 8)
        self.y = torch.tensor(data.target[idx], dtype=torch.long)
        self.num_classes = 10

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class DiabetesDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """scikit-learn's diabetes regression set (442 patients, 10 features), target standardized."""

    def __init__(self, split: Split = "train", val_fraction: float = 0.2, seed: int = 0) -> None:
        from sklearn.datasets import load_diabetes

        data = load_diabetes()
        idx = _split_indices(len(data.target), split, val_fraction, seed)
        target = (data.target - data.target.mean()) / data.target.std()
        self.x = torch.tensor(data.data[idx], dtype=torch.float32)
        self.y = torch.tensor(target[idx], dtype=torch.float32).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]
