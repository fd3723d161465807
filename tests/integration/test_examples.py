"""The examples run as users would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from retia.client.backend import Backend

from ..clusters import processes

ROOT = Path(__file__).parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_optuna_study_drives_the_dispatcher_as_a_backend(cluster: Backend) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "optuna_backend.py"),
            "--trials",
            "6",
            "--epochs",
            "3",
            "--address",
            cluster.address,
            "--key-file",
            str(processes(cluster).key_file),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=True,
    )
    rows = re.findall(r"^trial +\d+ (SUCCEEDED|CANCELLED|FAILED)", out.stdout, re.MULTILINE)
    assert len(rows) == 6 and "FAILED" not in rows
    match = re.search(r"best accuracy ([0-9.]+)", out.stdout)
    assert match is not None
    best = float(match.group(1))
    assert best > 0.8


def test_demo_runs_with_a_small_budget(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "digits_nas.py"),
            "--trials",
            "4",
            "--epochs",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=True,
    )
    assert "top architectures (4 trials" in proc.stdout
    assert (out / "report.png").stat().st_size > 10_000
    assert "| 1 |" in (out / "summary.md").read_text()
    import onnx

    onnx.checker.check_model(onnx.load(str(out / "best-model" / "model.onnx")))


def test_hub_search_searches_a_known_space_on_local_workers(tmp_path: Path) -> None:
    """examples/hub_search.py: MobileNetV3 (widths, kernels, ratios as ValueChoices) scaled to the digits,
    searched by 4 trials on 2 local workers; every trial trains (chance is 0.1)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "hub_search.py"),
            *(
                "--space",
                "mobilenetv3",
                "--strategy",
                "random",
                "--trials",
                "4",
                "--out",
                str(tmp_path / "hub"),
            ),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=True,
    )
    assert "4 trials in" in proc.stdout
    scores = [
        float(s) for s in re.findall(r"^rank \d: trial #\d+ val_acc ([0-9.]+)", proc.stdout, re.MULTILINE)
    ]
    assert len(scores) == 3 and scores[0] > 0.5, proc.stdout
    assert "'s1_width_mult'" in proc.stdout.rpartition("best architecture:")[2]


def test_spos_example_runs_its_three_stages(tmp_path: Path) -> None:
    """examples/spos.py: a RandomOneShot supernet, an evolution over subnets inheriting its weights
    (only validated), the best retrained from scratch (chance is 0.1)."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "spos.py"),
            *("--supernet-epochs", "3", "--trials", "6", "--epochs", "2", "--out", str(tmp_path / "spos")),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=True,
    )
    assert "stage 1: supernet trained for 3 epochs" in proc.stdout and "(SUCCEEDED)" in proc.stdout
    stage2 = re.search(r"stage 2: 6 subnets validated .* best ([0-9.]+), median ([0-9.]+)", proc.stdout)
    assert stage2 is not None and float(stage2.group(1)) >= float(stage2.group(2)) > 0.3, proc.stdout
    stage3 = re.search(r"stage 3: .* val_acc ([0-9.]+)", proc.stdout)
    assert stage3 is not None and float(stage3.group(1)) > 0.5, proc.stdout
