"""NNI's hello_nas tutorials (2.x and 3.0) run under ``retia.nni`` with only their import lines changed
(nni_hello_nas_v2.py, nni_hello_nas_v3.py; MNIST replaced by the digits, as nni_tutorial.py says):
each searches on a private local cluster, every trial learns, and the exported architecture builds
the concrete model as the tutorial then does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nni_hello_nas_v2 as v2
import nni_hello_nas_v3 as v3
import pytest
import torch

import retia.nni as nni

pytestmark = pytest.mark.timeout(240)


def test_hello_nas_2x(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the experiment is made under the working directory, as NNI's
    exp = v2.search()
    assert exp.port == 8081 and len(exp.results) == 4  # the config's max_trial_number
    for result in exp.results:
        assert result.state == "SUCCEEDED", result.reason
        assert len(result.intermediates) == 3 and isinstance(result.final, float)
        assert result.final > 30  # percent; chance is 10
    [exported] = exp.export_top_models(formatter="dict")
    space: Any = v2.ModelSpace()  # (mypy does not apply class decorators: it sees an nn.Module)
    assert set(exported) == set(space.search_space())
    with nni.retiarii.fixed_arch(exported):
        final_model: Any = v2.ModelSpace()
    assert isinstance(final_model, torch.nn.Module) and final_model.frozen_arch == exported
    assert final_model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_hello_nas_3x(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exp = v3.search()  # its fit calls model.to(device): a class (2.x's way) would fail every trial
    assert exp.port == 8081 and len(exp.results) == 3
    for result in exp.results:
        assert result.state == "SUCCEEDED", result.reason
        assert isinstance(result.final, float) and result.final > 30
    [exported] = exp.export_top_models(formatter="dict")
    assert set(exported) == {"conv2", "dropout", "feature"}  # the labels the tutorial gives
    [model] = exp.export_top_models(formatter="instance")
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
