"""Small model spaces over scikit-learn's digits, shared by the tests (and usable by demos)."""

from __future__ import annotations

from collections import OrderedDict

import torch

import retia.nn as nn


class DigitsMLPSpace(nn.ModelSpace):
    """MLP over the 64 pixels: a width, one op per block, and a skip into the head."""

    def __init__(self, n_blocks: int = 2, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        width = nn.ValueChoice(list(widths), label="width")
        self.stem = nn.Sequential(nn.Linear(64, width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.LayerChoice(
                OrderedDict(
                    relu=nn.Sequential(nn.Linear(width, width), nn.ReLU()),
                    tanh=nn.Sequential(nn.Linear(width, width), nn.Tanh()),
                    bottleneck=nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Linear(8, width)),
                ),
                label=f"block{i}",
            )
            for i in range(n_blocks)
        )
        self.skip = nn.InputChoice(2, label="skip")
        self.head = nn.Linear(width, 10)  # the same ValueChoice object, used in a second layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        h, first = x, None
        for block in self.blocks:
            h = block(h)
            first = h if first is None else first
        out: torch.Tensor = self.head(h + self.skip([x, first]))
        return out


class DigitsConvSpace(nn.ModelSpace):
    """Conv blocks over 1x8x8 images: channels, an op per block (one with a nested choice), a 2-of-3 skip."""

    def __init__(self, n_blocks: int = 2) -> None:
        super().__init__()
        c = nn.ValueChoice([4, 8], label="channels")
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.LayerChoice(
                OrderedDict(
                    conv3x3=nn.Conv2d(c, c, 3, padding=1),
                    conv5x5=nn.Conv2d(c, c, 5, padding=2),
                    sepconv=nn.Sequential(
                        nn.Conv2d(c, c, 3, padding=1, groups=c),
                        nn.BatchNorm2d(c),
                        nn.LayerChoice([nn.ReLU(), nn.Tanh()], label=f"sep{i}_act"),
                    ),
                ),
                label=f"op{i}",
            )
            for i in range(n_blocks)
        )
        self.skip = nn.InputChoice(n_blocks + 1, n_chosen=2, reduction="sum", label="skip")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(c * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for block in self.blocks:
            feats.append(torch.relu(block(feats[-1])))
        out: torch.Tensor = self.head(self.skip(feats))
        return out


class TinySpace(nn.ModelSpace):
    """Three small decisions with auto-generated labels: for grid and label tests."""

    def __init__(self, in_features: int = 4) -> None:
        super().__init__()
        width = nn.ValueChoice([2, 3])
        self.fc = nn.Linear(in_features, width)
        self.act = nn.LayerChoice([nn.ReLU(), nn.Tanh(), nn.Identity()])
        self.pick = nn.InputChoice(2)
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        out: torch.Tensor = self.out(self.pick([h, self.act(h)]))
        return out
