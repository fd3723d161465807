"""fit functions for end-to-end tests: real training, and every way a trial can go wrong."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from retia import report_final_result, report_intermediate_result


class DigitsMLP(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class DropoutMLP(nn.Module):
    """A digits classifier that draws random numbers while it trains (its dropout), not only when built."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.Dropout(0.3), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def train_digits(
    model_cls: Callable[[], nn.Module], train: Any, val: Any, epochs: int = 2, seed: int = 0
) -> None:
    """A plain PyTorch loop on digits reporting validation accuracy per epoch and at the end."""
    torch.manual_seed(seed)
    model = model_cls()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    acc = 0.0
    for _epoch in range(epochs):
        model.train()
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        acc = correct / total
        report_intermediate_result(acc)
    report_final_result({"default": acc, "epochs": float(epochs)})


def announce() -> None:
    """A first line in trial.log, with this trial process's pid (tests that kill it read it there)."""
    print(f"fit pid {os.getpid()}", flush=True)


def counting(model_cls: Any, steps: int = 3, delay: float = 0.0) -> None:
    announce()
    for i in range(steps):
        report_intermediate_result(float(i))
        if delay:
            time.sleep(delay)
    report_final_result(float(steps))


def quiet(model_cls: Any) -> None:
    """Prints and writes nothing: with --reuse-process it leaves no directory on the worker."""
    report_final_result(1.0)


def scheduling_policy(model_cls: Any) -> None:
    """Reports this trial process's scheduling policy (os.SCHED_*)."""
    report_final_result(float(os.sched_getscheduler(0)))


def raising(model_cls: Any) -> None:
    announce()
    report_intermediate_result(0.5)
    raise ValueError("the model diverged")


def hanging(model_cls: Any) -> None:
    announce()
    time.sleep(600)


def aborting(model_cls: Any) -> None:
    os.abort()


def exiting(model_cls: Any, code: int = 3) -> None:
    sys.exit(code)


def hard_exit(model_cls: Any) -> None:
    announce()
    print("leaving without a final result", flush=True)
    os._exit(0)


def segfault(model_cls: Any) -> None:
    ctypes.string_at(0)


def realtime_signal(model_cls: Any) -> None:
    """Die of a real-time signal, which has no name in ``signal.Signals``."""
    os.kill(os.getpid(), signal.SIGRTMIN + 2)


# A known function of the architecture of tests/common/spaces.py's DigitsMLPSpace.
PREFERENCE: dict[str, dict[Any, float]] = {
    "width": {16: 0.0, 32: 0.3, 64: 0.6},
    "block0": {"relu": 0.4, "tanh": 0.2, "bottleneck": 0.0},
    "block1": {"relu": 0.0, "tanh": 0.4, "bottleneck": 0.2},
    "skip": {0: 0.0, 1: 0.3},
}


def devices(model_cls: Any) -> None:
    """Reports the GPUs the trial was given (CUDA_VISIBLE_DEVICES: a fake list on CPU machines)
    and its share of their memory (RETIA_GPU_MEMORY_FRACTION, 1 when it shares none)."""
    visible = [int(d) for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    fraction = float(os.environ.get("RETIA_GPU_MEMORY_FRACTION", "1"))
    first = visible[0] if visible else -1
    report_final_result({"default": first, "first": first, "count": len(visible), "fraction": fraction})


def holds_gpu_memory(model_cls: Any, state: str, used: int) -> None:
    """Leaves ``used`` bytes held on device 0 of a fake NVML (its state file: tests/nvml.py) by this
    process, as a trial whose memory outlives it would; reports its pid."""
    partial = f"{state}.{os.getpid()}"
    with open(partial, "w") as f:
        f.write(f"{used} {os.getpid()}:{used}\n")
    os.replace(partial, state)
    report_final_result({"default": 1.0, "pid": os.getpid()})


def lightning_devices(model_cls: Any) -> None:
    """Reports what a Trainer retia builds would run on here (retia.devices.trainer_devices):
    ``gpu`` 1 for the GPU accelerator, 0 for the CPU; ``devices``; ``ddp_fork`` 1 when DDP is forked."""
    from retia.devices import trainer_devices

    given = trainer_devices()
    report_final_result(
        {
            "default": given.devices,
            "gpu": float(given.accelerator == "gpu"),
            "cpu": float(given.accelerator == "cpu"),
            "devices": given.devices,
            "ddp_fork": float(given.strategy == "ddp_fork"),
        }
    )


def known_score(arch: dict[str, Any]) -> float:
    return sum(PREFERENCE[label][choice] for label, choice in arch.items())


def arch_score(model_cls: Any, steps: int = 4, delay: float = 0.0) -> None:
    """Builds the concrete model, then reports a curve rising to a known score of its architecture."""
    model = model_cls()
    score = known_score(model.frozen_arch)
    for step in range(1, steps + 1):
        report_intermediate_result(score * step / steps)
        if delay:
            time.sleep(delay)
    report_final_result(score)


def export_onnx(model_cls: Any) -> None:
    """The seed's example: write model.onnx into NNI_OUTPUT_DIR from inside fit."""
    announce()
    from pathlib import Path

    model = model_cls().eval()
    torch.onnx.export(model, (torch.randn(2, 64),), Path(os.environ["NNI_OUTPUT_DIR"]) / "model.onnx")
    report_final_result(1.0)


def _refuse_to_rebuild() -> None:
    raise RuntimeError("this object cannot be rebuilt here")


class BreaksOnLoad:
    """Pickles fine on the client; unpickling it on the worker raises."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_refuse_to_rebuild, ())


def uses(model_cls: Any, thing: Any) -> None:
    report_final_result(1.0)


def unserializable_result(model_cls: Any) -> None:
    report_final_result({"default": 1.0, "model": model_cls()})


def tensor_stats(model_cls: Any, data: Any) -> None:
    """Uses a large tensor argument (a blob on the wire) and reports something computed from it."""
    report_intermediate_result(float(data[:1000].sum()))
    report_final_result(float(data[-1000:].sum()))


def gc_frozen_objects(model_cls: Any) -> None:
    import gc

    report_final_result(float(gc.get_freeze_count()))


def writes_nested(model_cls: Any) -> None:
    """Files in subdirectories of the output directory, a link to one of them, and a larger one."""
    from pathlib import Path

    announce()
    root = Path(os.environ["RETIA_OUTPUT_DIR"])
    (root / "logs" / "epoch-1").mkdir(parents=True)
    (root / "logs" / "epoch-1" / "metrics.csv").write_text("step,loss\n1,0.5\n")
    (root / "best.txt").symlink_to(root / "logs" / "epoch-1" / "metrics.csv")
    (root / "weights.bin").write_bytes(bytes(range(256)) * 1024)  # 256 KiB: too big to ride inside DONE
    report_final_result(1.0)


def padded(model_cls: Any, pad: str) -> None:
    """An evaluator made large by its argument (a string is pickled into it, not sent as a blob)."""
    report_final_result(float(len(pad)))


def arch_and_arguments(model_cls: Any, lr: float, width: int) -> None:
    """Reports the known score of its architecture plus ``lr``, and what it was given: ``width`` is
    the model's own choice, shared with the evaluator (the same value)."""
    model = model_cls()
    arch = model.frozen_arch
    report_final_result({"default": known_score(arch) + lr, "lr": lr, "width": width})
