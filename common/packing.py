"""Packed trials: several candidates trained in one process, as one Lightning run, on the same batches.

NNI's cross-graph optimization (CGO), made real. A :class:`PackModule` holds one copy of the
evaluator's module per candidate and drives them itself (manual optimization): every batch is
loaded once and fed to each candidate's own ``training_step``, its own optimizer and schedulers
step, its ``self.log`` calls land under its own names, and its validation metrics become its own
reports. Each candidate runs under its own random stream (:mod:`retia.seeding`), so a packed
trial gives what it gives alone with the same seed. A candidate whose loss is not finite, whose
step raises, or that is stopped (cancelled, pruned) leaves the pack; the others train on.

Only what can be packed is: :func:`unpackable` says why an evaluator cannot be (a
``FunctionalEvaluator``'s fit is the user's own loop), and such trials run one per process.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.model_helpers import is_overridden

from . import _lightning_support as support
from . import seeding
from .errors import ConfigError, RetiaError
from .evaluator import OUTPUT_DIR_VARS, EvaluationResult, Evaluator, model_factory
from .optimizers import Schedule, split_optimizers, step_schedules
from .reporting import CollectingReporter, Metric, Reporter, use_reporter
from .trace import get_recipe

if TYPE_CHECKING:
    from .lightning import Lightning

__all__ = [
    "PackMember",
    "PackedOutcome",
    "PackModule",
    "NonFiniteLoss",
    "unpackable",
    "fit_pack",
    "evaluate_packed",
]

_log = logging.getLogger(__name__)

# Hooks of a module that take over Lightning's optimization: such a module trains only alone
_OPTIMIZATION_HOOKS = (
    "optimizer_step",
    "optimizer_zero_grad",
    "lr_scheduler_step",
    "configure_gradient_clipping",
    "manual_backward",
    "train_dataloader",
    "val_dataloader",
)
# Its other hooks, called for each candidate at their usual moments
_HOOKS = (
    "on_fit_start",
    "on_fit_end",
    "on_train_start",
    "on_train_end",
    "on_train_epoch_start",
    "on_validation_start",
    "on_validation_end",
    "on_validation_epoch_start",
    "on_validation_epoch_end",
)
_UNPACKABLE_TRAINER = {
    "gradient_clip_val": None,
    "accumulate_grad_batches": 1,
    "callbacks": None,
}


class NonFiniteLoss(RetiaError):
    """A candidate's training loss was NaN or infinite: that trial fails, its pack trains on."""


@dataclass
class PackMember:
    """One candidate of a pack: its model, its seed, where its reports and files go.

    ``stop`` is asked before every training batch: a reason ("cancelled", a pruner's verdict)
    takes the candidate out of the pack, "" keeps it in."""

    model: Any
    seed: int
    output_dir: Path
    reporter: Reporter
    stop: Callable[[], str] = lambda: ""


@dataclass
class PackedOutcome:
    """How one candidate of a pack ended: it succeeded (``error`` None), failed or was stopped."""

    error: BaseException | None = None
    traceback: str = ""
    stopped: str = ""  # the reason it was taken out of the pack (not a failure)


@dataclass
class _Candidate:
    index: int
    member: PackMember
    module: pl.LightningModule
    rng: seeding.RngState
    outcome: PackedOutcome = field(default_factory=PackedOutcome)
    alive: bool = True
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    last: dict[str, float] | None = None
    count: int = 0  # validations reported while fitting

    @property
    def suffix(self) -> str:
        """What its metric names carry in the pack's trainer (see :func:`_split`)."""
        return f"@{self.index}"


def unpackable(evaluator: Evaluator) -> str:
    """Why ``evaluator``'s trials cannot share a process ("" when they can)."""
    from .lightning import Lightning

    if not isinstance(evaluator, Lightning):
        return (
            f"a {type(evaluator).__name__} runs the user's own training loop, which cannot be shared "
            "(only retia.lightning evaluators pack)"
        )
    if type(evaluator)._fit_module is not Lightning._fit_module or type(evaluator)._run is not Lightning._run:
        return f"{type(evaluator).__name__} fits its module its own way"
    module = evaluator.module
    if not module.automatic_optimization:
        return f"{type(module).__name__} optimizes manually (automatic_optimization=False)"
    overridden = [hook for hook in _OPTIMIZATION_HOOKS if is_overridden(hook, module)]
    if overridden:
        return f"{type(module).__name__} overrides {', '.join(overridden)}"
    options = _trainer_kwargs(evaluator)
    for name, neutral in _UNPACKABLE_TRAINER.items():
        if options.get(name, neutral) not in (neutral, [], 0):
            return (
                f"its Trainer sets {name}={options[name]!r}, which applies to the pack, not to each candidate"
            )
    if str(options.get("precision", "32")) in ("16", "16-mixed"):
        return "its Trainer trains in float16 with a gradient scaler shared by the pack"
    return ""


def _trainer_kwargs(evaluator: Lightning) -> dict[str, Any]:
    if evaluator.trainer is not None:
        recipe = get_recipe(evaluator.trainer)
        return dict(recipe.kwargs) if recipe is not None else {}
    return {**evaluator._trainer_defaults, **evaluator.trainer_kwargs}


class PackModule(pl.LightningModule):
    """The candidates of a pack as one LightningModule (manual optimization, see the module's doc)."""

    def __init__(self, candidates: list[_Candidate], *, report: bool, bare: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.candidates = candidates
        self.report = report  # the candidates' validation metrics become their reports
        self.bare = bare  # ... as the 'default' number alone (NNI's Classification)
        for candidate in candidates:
            self.add_module(f"candidate_{candidate.index}", candidate.module)  # (gets the trainer too)
            object.__setattr__(candidate.module, "log", _logger_of(candidate))

    def alive(self) -> list[_Candidate]:
        return [c for c in self.candidates if c.alive]

    @contextlib.contextmanager
    def running(self, candidate: _Candidate, hook: str) -> Iterator[None]:
        """Run code of one candidate as Lightning's hook ``hook``: under its random stream, with its
        reporter and output directory, its ``self.log`` calls under its own names."""
        module = candidate.module
        before = module._current_fx_name
        module._current_fx_name = hook
        saved = {name: os.environ.get(name) for name in OUTPUT_DIR_VARS}
        os.environ.update({name: str(candidate.member.output_dir) for name in OUTPUT_DIR_VARS})
        try:
            with candidate.rng.active(), use_reporter(candidate.member.reporter):
                yield
        finally:
            module._current_fx_name = before
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def leave(self, candidate: _Candidate, error: BaseException | None = None, stopped: str = "") -> None:
        """Take a candidate out of the pack (failed with ``error``, or ``stopped``); the rest go on."""
        candidate.alive = False
        if error is not None:
            text = "".join(traceback.format_exception(error))
            candidate.outcome = PackedOutcome(error, text)
            print(f"retia: pack candidate {candidate.index} failed: {type(error).__name__}: {error}")
            print(text, end="")
        else:
            candidate.outcome = PackedOutcome(stopped=stopped)
            print(f"retia: pack candidate {candidate.index} stopped: {stopped}")
        for optimizer in candidate.optimizers:
            optimizer.state.clear()  # its memory goes back (the device's, on a GPU)
        candidate.optimizers = []
        candidate.module.requires_grad_(False)
        if not self.alive():
            self.trainer.should_stop = True

    # ---- optimizers ----

    def configure_optimizers(self) -> Any:
        every: list[torch.optim.Optimizer] = []
        for candidate in self.alive():
            try:
                with self.running(candidate, "configure_optimizers"):
                    optimizers, schedules = split_optimizers(candidate.module.configure_optimizers())
                if len(optimizers) != 1:
                    raise ConfigError(
                        f"{type(candidate.module).__name__}.configure_optimizers gave {len(optimizers)} "
                        "optimizers; Lightning's automatic optimization takes exactly one"
                    )
            except Exception as exc:
                self.leave(candidate, exc)
                continue
            candidate.optimizers, candidate.schedules = optimizers, schedules
            every += optimizers
        return every

    def _step_schedules(self, candidate: _Candidate, interval: str) -> None:
        count = self.trainer.global_step if interval == "step" else self.current_epoch + 1

        def monitored(name: str | None) -> Any:
            monitor = name or getattr(candidate.module, "default_metric", None) or ""
            value = self.trainer.callback_metrics.get(monitor + candidate.suffix)
            if value is None:
                raise ConfigError(f"ReduceLROnPlateau monitors {monitor!r}, which was not logged")
            return value

        step_schedules(candidate.schedules, interval, count, monitored)

    # ---- steps ----

    def training_step(self, batch: Any, batch_idx: int) -> None:
        stepped = False
        for candidate in self.alive():
            reason = candidate.member.stop()
            if reason:
                self.leave(candidate, stopped=reason)
                continue
            try:
                stepped |= self._train(candidate, batch, batch_idx)
            except Exception as exc:  # this candidate's trial fails; the pack trains on
                self.leave(candidate, exc)
        if stepped:
            _count_step(self.trainer)

    def _train(self, candidate: _Candidate, batch: Any, batch_idx: int) -> bool:
        """One training step of one candidate, as Lightning's automatic optimization does it."""
        module = candidate.module
        with self.running(candidate, "training_step"):
            module.on_train_batch_start(batch, batch_idx)
            out = module.training_step(batch, batch_idx)
            loss = _loss_of(module, out)
            if loss is None:
                return False  # it skipped the batch
            if not math.isfinite(float(loss.detach())):
                raise NonFiniteLoss(
                    f"the training loss is {float(loss.detach())} at epoch {self.current_epoch}, batch "
                    f"{batch_idx}: the candidate diverged (lower the learning rate, or check the model)"
                )
            (optimizer,) = candidate.optimizers
            module.on_before_zero_grad(optimizer)
            optimizer.zero_grad()
            module.on_before_backward(loss)
            self.manual_backward(loss)
            module.on_after_backward()
            module.on_before_optimizer_step(optimizer)
            optimizer.step()
            module.on_train_batch_end(out, batch, batch_idx)
            self._step_schedules(candidate, "step")
        return True

    def validation_step(self, batch: Any, batch_idx: int, *args: Any) -> None:
        for candidate in self.alive():
            try:
                with self.running(candidate, "validation_step"):
                    candidate.module.validation_step(batch, batch_idx, *args)
            except Exception as exc:
                self.leave(candidate, exc)

    # ---- hooks ----

    def _hook(self, name: str) -> None:
        for candidate in self.alive():
            try:
                with self.running(candidate, name):
                    getattr(candidate.module, name)()
            except Exception as exc:
                self.leave(candidate, exc)

    def setup(self, stage: str) -> None:
        for candidate in self.alive():
            try:
                with self.running(candidate, "setup"):
                    candidate.module.setup(stage)
            except Exception as exc:
                self.leave(candidate, exc)

    def teardown(self, stage: str) -> None:
        for candidate in self.alive():
            with self.running(candidate, "teardown"):
                candidate.module.teardown(stage)

    def on_fit_start(self) -> None:
        self._hook("on_fit_start")

    def on_fit_end(self) -> None:
        self._hook("on_fit_end")

    def on_train_start(self) -> None:
        self._hook("on_train_start")

    def on_train_end(self) -> None:
        self._hook("on_train_end")

    def on_train_epoch_start(self) -> None:
        self._hook("on_train_epoch_start")

    def on_train_epoch_end(self) -> None:
        for candidate in self.alive():
            try:
                with self.running(candidate, "on_train_epoch_end"):
                    candidate.module.on_train_epoch_end()
                    self._step_schedules(candidate, "epoch")
            except Exception as exc:
                self.leave(candidate, exc)

    def on_validation_start(self) -> None:
        self._hook("on_validation_start")

    def on_validation_epoch_start(self) -> None:
        self._hook("on_validation_epoch_start")

    def on_validation_epoch_end(self) -> None:
        self._hook("on_validation_epoch_end")

    def on_validation_end(self) -> None:
        self._hook("on_validation_end")
        if self.trainer.sanity_checking:
            return
        fitting = self.trainer.state.fn == "fit"
        logged = support.validation_metrics(self.trainer)
        by_candidate: dict[str, dict[str, float]] = {}
        for key, value in logged.items():
            name, index = _split(key)
            by_candidate.setdefault(index, {})[name] = value
        for candidate in self.alive():
            metrics = by_candidate.get(str(candidate.index))
            if not metrics:
                continue
            try:
                candidate.last = support.with_default(
                    metrics, getattr(candidate.module, "default_metric", None)
                )
                if fitting and self.report:
                    candidate.count += 1
                    with self.running(candidate, "on_validation_end"):
                        candidate.member.reporter.intermediate(self.value(candidate))
            except Exception as exc:
                self.leave(candidate, exc)

    def value(self, candidate: _Candidate) -> Metric:
        """What a candidate reports for its last validation (see ``ReportingCallback.value``)."""
        if candidate.last is None:
            raise ConfigError(
                "no validation metric was logged, so there is nothing to report: give val_dataloaders "
                "and log at least one metric in validation_step"
            )
        return candidate.last["default"] if self.bare else candidate.last


class _PackLogger(pl.loggers.Logger):
    """The CSV logger of a trainer retia builds, one per candidate: each candidate's metrics, under
    their own names, in its own output directory (``lightning_logs/``), as it would alone."""

    def __init__(self, candidates: list[_Candidate]) -> None:
        super().__init__()
        self._loggers = {
            str(c.index): pl.loggers.CSVLogger(str(c.member.output_dir), name="lightning_logs")
            for c in candidates
        }
        for candidate in candidates:  # (Lightning logs the pack's, which has none)
            hparams = candidate.module.hparams_initial
            if hparams:
                self._loggers[str(candidate.index)].log_hyperparams(hparams)

    @property
    def name(self) -> str:
        return "lightning_logs"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The pack's own: it has none (each candidate's were logged when the logger was made)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        shared = {k: v for k, v in metrics.items() if _split(k)[1] not in self._loggers}
        parts: dict[str, dict[str, Any]] = {}
        for key, value in metrics.items():
            name, index = _split(key)
            if index in self._loggers:
                parts.setdefault(index, dict(shared))[name] = value
        for index, part in parts.items():
            self._loggers[index].log_metrics(part, step)

    def save(self) -> None:
        for logger in self._loggers.values():
            logger.save()

    def finalize(self, status: str) -> None:
        for logger in self._loggers.values():
            logger.finalize(status)


def _split(name: str) -> tuple[str, str]:
    """(metric name, candidate index) of a name a candidate logged; (name, "") for the pack's own."""
    base, at, index = name.rpartition("@")
    return (base, index) if at and index.isdigit() else (name, "")


def _logger_of(candidate: _Candidate) -> Callable[..., None]:
    """The candidate's ``self.log``: Lightning's, under the candidate's own name for each metric."""
    module, suffix = candidate.module, candidate.suffix

    def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        pl.LightningModule.log(module, name + suffix, value, *args, **kwargs)

    return log


def _loss_of(module: pl.LightningModule, out: Any) -> torch.Tensor | None:
    if out is None or isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and isinstance(out.get("loss"), torch.Tensor):
        loss: torch.Tensor = out["loss"]
        return loss
    raise ConfigError(
        f"{type(module).__name__}.training_step returned a {type(out).__name__}: return the loss "
        "(a tensor, a dict with 'loss', or None to skip the batch)"
    )


def _count_step(trainer: pl.Trainer) -> None:
    """One optimizer step for the pack's trainer (its ``global_step``, ``max_steps``, step-interval
    validation), as Lightning counts one for a candidate trained alone; the candidates' own
    optimizers step outside Lightning's wrappers, which would count one per candidate."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    progress.increment_ready()
    progress.increment_completed()


def fit_pack(evaluator: Lightning, members: Sequence[PackMember]) -> list[PackedOutcome]:
    """Train ``members`` together with ``evaluator``'s module, data and trainer: each reports as
    it would alone (its seed's result); the outcome of each, in order."""
    reason = unpackable(evaluator)
    if reason:
        raise ConfigError(f"these trials cannot be packed: {reason}")
    if not members:
        return []
    auto_report = evaluator._auto_report()
    if auto_report:
        evaluator._check_data()
    candidates: list[_Candidate] = []
    for index, member in enumerate(members):
        rng = seeding.RngState.fresh(member.seed)
        candidate = _Candidate(index, member, pl.LightningModule(), rng)
        try:
            with rng.active(), use_reporter(member.reporter):
                module = copy.deepcopy(evaluator.module)
                module.set_model(model_factory(member.model))
            candidate.module = module
        except Exception as exc:
            candidate.alive = False
            candidate.outcome = PackedOutcome(exc, "".join(traceback.format_exception(exc)))
        candidates.append(candidate)
    building = [c for c in candidates if c.alive]
    if building:
        _fit(evaluator, building, auto_report)
    for candidate in candidates:
        if candidate.alive and auto_report:
            try:
                with contextlib.ExitStack() as stack:
                    stack.enter_context(use_reporter(candidate.member.reporter))
                    candidate.member.reporter.final(_final(candidate, evaluator))
            except Exception as exc:
                candidate.outcome = PackedOutcome(exc, "".join(traceback.format_exception(exc)))
    return [c.outcome for c in candidates]


def _final(candidate: _Candidate, evaluator: Lightning) -> Metric:
    if candidate.last is None:
        raise ConfigError(
            "no validation metric was logged, so there is nothing to report: give val_dataloaders "
            "and log at least one metric in validation_step"
        )
    return candidate.last["default"] if evaluator.bare_metric else candidate.last


def _fit(evaluator: Lightning, candidates: list[_Candidate], auto_report: bool) -> None:
    pack = PackModule(candidates, report=auto_report, bare=evaluator.bare_metric)
    out = candidates[0].member.output_dir
    stream = seeding.RngState.fresh(seeding.DATA_SEED)
    loaders = seeding.drawing_from(
        stream, [evaluator.train_dataloaders, evaluator.val_dataloaders], [evaluator.datamodule]
    )
    callback = support.ReportingCallback(None, report=False)
    with support.quiet(), support.interrupts(callback, detect=evaluator.detect_interrupt), loaders:
        trainer = evaluator._build_trainer(out, callback, _PackLogger(candidates))
        if evaluator.fit_enabled:
            trainer.fit(
                pack,
                evaluator.train_dataloaders,
                evaluator.val_dataloaders,
                datamodule=evaluator.datamodule,
                **evaluator.fit_kwargs,
            )
        else:
            trainer.validate(
                pack,
                evaluator.val_dataloaders,
                datamodule=evaluator.datamodule,
                **{"verbose": False, **support.validate_kwargs(evaluator.fit_kwargs)},
            )


def evaluate_packed(
    evaluator: Lightning,
    models: Sequence[Any],
    *,
    seeds: Sequence[int],
    output_dirs: Sequence[str | os.PathLike[str]] | None = None,
) -> list[tuple[EvaluationResult, PackedOutcome]]:
    """Train ``models`` as one pack in this process, each under its seed: what each reported and
    how it ended (``Evaluator.evaluate``, packed)."""
    if len(seeds) != len(models):
        raise ConfigError(f"give one seed per model ({len(models)} models, {len(seeds)} seeds)")
    for seed in seeds:
        seeding.check_seed(seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dirs = [
        Path(os.path.abspath(d))
        for d in (output_dirs or [Path("retia-runs") / f"{stamp}-pack-{i}" for i in range(len(models))])
    ]
    for directory in dirs:
        directory.mkdir(parents=True, exist_ok=True)
    reporters = [CollectingReporter() for _ in models]
    members = [PackMember(m, s, d, r) for m, s, d, r in zip(models, seeds, dirs, reporters)]
    start = time.perf_counter()
    outcomes = fit_pack(evaluator, members)
    duration = time.perf_counter() - start
    return [
        (EvaluationResult(r.final_value, list(r.intermediates), duration, d), outcome)
        for r, d, outcome in zip(reporters, dirs, outcomes)
    ]
