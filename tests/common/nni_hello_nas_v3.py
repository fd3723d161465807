"""NNI 3.0's hello_nas tutorial, written for these tests from its documented steps, with only the
import lines changed (``nni`` -> ``retia.nni``) and MNIST replaced by the digits (see nni_tutorial):
a ``ModelSpace`` subclass with ``nni.choice``, ``MutableDropout`` and ``MutableLinear``,
``strategy.Random()``, a ``FunctionalEvaluator`` whose fit gets the model itself,
``NasExperiment(model_space, evaluator, strategy)`` configured through ``exp.config`` and run with
``port=``, then ``export_top_models``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from nni_tutorial import DigitsAsMNIST, test_epoch, train_epoch
from torch.utils.data import DataLoader

import retia.nni as nni
import retia.nni.nas.strategy as strategy
from retia.nni.nas.evaluator import FunctionalEvaluator
from retia.nni.nas.experiment import NasExperiment
from retia.nni.nas.nn.pytorch import LayerChoice, ModelSpace, MutableDropout, MutableLinear

LIMIT = 256  # samples per split: the tutorial's three epochs in seconds


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, kernel_size=3, groups=in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pointwise(self.depthwise(x))
        return out


class MyModelSpace(ModelSpace):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = LayerChoice([nn.Conv2d(32, 64, 3, 1), DepthwiseSeparableConv(32, 64)], label="conv2")
        self.dropout1 = MutableDropout(nni.choice("dropout", [0.25, 0.5, 0.75]))
        self.dropout2 = nn.Dropout(0.5)
        feature = nni.choice("feature", [64, 128, 256])
        self.fc1 = MutableLinear(9216, feature)
        self.fc2 = MutableLinear(feature, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.fc2(self.dropout2(F.relu(self.fc1(x))))
        return F.log_softmax(x, dim=1)


def evaluate_model(model: Any) -> None:
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)  # 3.0: fit gets the model itself
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_loader = DataLoader(DigitsAsMNIST(train=True, limit=LIMIT), batch_size=64, shuffle=True)
    test_loader = DataLoader(DigitsAsMNIST(train=False, limit=LIMIT), batch_size=64)
    accuracy = 0.0
    for _epoch in range(3):
        train_epoch(model, device, train_loader, optimizer)
        accuracy = test_epoch(model, device, test_loader)
        nni.report_intermediate_result(accuracy)
    nni.report_final_result(accuracy)


def search() -> NasExperiment:
    """The tutorial's experiment: three trials, one at a time, no GPU."""
    model_space = MyModelSpace()
    search_strategy = strategy.Random()
    evaluator = FunctionalEvaluator(evaluate_model)
    exp = NasExperiment(model_space, evaluator, search_strategy)
    exp.config.max_trial_number = 3
    exp.config.trial_concurrency = 1
    exp.config.trial_gpu_number = 0
    exp.run(port=8081)
    return exp
