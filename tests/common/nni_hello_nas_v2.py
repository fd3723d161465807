"""NNI 2.x's hello_nas tutorial, written for these tests from its documented steps, with only the
import lines changed (``nni`` -> ``retia.nni``) and MNIST replaced by the digits (see nni_tutorial):
a model space with ``@model_wrapper``, ``strategy.Random(dedup=True)``, a ``FunctionalEvaluator``
whose fit gets the model class, ``RetiariiExperiment(model_space, evaluator, [], strategy)`` run
with a ``RetiariiExeConfig`` and a port, then ``export_top_models`` and ``fixed_arch``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from nni_tutorial import DigitsAsMNIST, test_epoch, train_epoch
from torch.utils.data import DataLoader

import retia.nni as nni
import retia.nni.retiarii.nn.pytorch as nn
import retia.nni.retiarii.strategy as strategy
from retia.nni.retiarii import model_wrapper
from retia.nni.retiarii.evaluator import FunctionalEvaluator
from retia.nni.retiarii.experiment.pytorch import RetiariiExeConfig, RetiariiExperiment

LIMIT = 256  # samples per split: the tutorial's three epochs in seconds


class DepthwiseSeparableConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, kernel_size=3, groups=in_ch)
        self.pointwise = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pointwise(self.depthwise(x))
        return out


@model_wrapper
class ModelSpace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.LayerChoice([nn.Conv2d(32, 64, 3, 1), DepthwiseSeparableConv(32, 64)])
        self.dropout1 = nn.Dropout(nn.ValueChoice([0.25, 0.5, 0.75]))
        self.dropout2 = nn.Dropout(0.5)
        feature = nn.ValueChoice([64, 128, 256])
        self.fc1 = nn.Linear(9216, feature)
        self.fc2 = nn.Linear(feature, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.fc2(self.dropout2(F.relu(self.fc1(x))))
        return F.log_softmax(x, dim=1)


def evaluate_model(model_cls: Any) -> None:
    model = model_cls()  # 2.x: fit gets the class
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_loader = DataLoader(DigitsAsMNIST(train=True, limit=LIMIT), batch_size=64, shuffle=True)
    test_loader = DataLoader(DigitsAsMNIST(train=False, limit=LIMIT), batch_size=64)
    accuracy = 0.0
    for _epoch in range(3):
        train_epoch(model, device, train_loader, optimizer)
        accuracy = test_epoch(model, device, test_loader)
        nni.report_intermediate_result(accuracy)
    nni.report_final_result(accuracy)


def search() -> RetiariiExperiment:
    """The tutorial's experiment: four trials, two at a time, on this machine's CPU."""
    model_space = ModelSpace()
    search_strategy = strategy.Random(dedup=True)
    evaluator = FunctionalEvaluator(evaluate_model)
    exp = RetiariiExperiment(model_space, evaluator, [], search_strategy)
    exp_config = RetiariiExeConfig("local")
    exp_config.experiment_name = "mnist_search"
    exp_config.max_trial_number = 4
    exp_config.trial_concurrency = 2
    exp_config.trial_gpu_number = 0
    exp_config.training_service.use_active_gpu = False
    exp.run(exp_config, 8081)
    return exp
