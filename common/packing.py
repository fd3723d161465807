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
from .evaluator import OUTPUT_DIR_VARS, EvaluationResult, Evaluator, _fresh_run_dir, model_factory
from .optimizers import FusedStep, Schedule, clear_gradients, fusable, split_optimizers, step_schedules
from .reporting import CollectingReporter, Metric, Reporter, use_reporter

if TYPE_CHECKING:
    from .lightning import Lightning

__all__ = [
    "PackMember",
    "PackedOutcome",
    "PackModule",
    "NonFiniteLoss",
    "StopCandidate",
    "running_member",
    "unpackable",
    "fit_pack",
    "evaluate_packed",
]

_log = logging.getLogger(__name__)

# Hooks of a module that take over Lightning's optimization: such a module trains only alone
# a candidate that overrides none of these leaves its backward and optimizer step to the pack
_AFTER_BACKWARD_HOOKS = ("backward", "on_after_backward", "on_before_optimizer_step", "on_train_batch_end")
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


class StopCandidate(RetiaError):
    """Raised into a candidate's own code (by a watchdog: its timeout passed, it was cancelled) to
    take it out of its pack, stopped, not failed; the others train on."""


_RUNNING: list[PackMember | None] = [None]  # the member whose code runs now (see running_member)


def running_member() -> PackMember | None:
    """The member of a pack whose own code (a step, a hook) this process runs now, if any."""
    return _RUNNING[0]


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
    ended: Callable[[PackedOutcome], None] | None = None  # told its outcome as soon as it is known


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
    reporter: _MemberReporter
    module: pl.LightningModule
    rng: seeding.RngState
    alive: bool = True
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)
    fused: bool = False  # its backward and optimizer step are the pack's, with the others' (_step_fused)
    last: dict[str, float] | None = None
    _overrides: dict[str, bool] = field(default_factory=dict)

    def overrides(self, hook: str) -> bool:
        """Whether its module overrides Lightning's (empty) hook ``hook``: if not, calling it is skipped."""
        known = self._overrides.get(hook)
        if known is None:
            known = self._overrides[hook] = bool(is_overridden(hook, self.module))
        return known

    @property
    def suffix(self) -> str:
        """What its metric names carry in the pack's trainer (see :func:`_split`)."""
        return f"@{self.index}"


def unpackable(evaluator: Evaluator) -> str:
    """Why ``evaluator``'s trials cannot share a process ("" when they can)."""
    from .lightning import Lightning

    if not isinstance(evaluator, Lightning):
        return Evaluator.unpackable(evaluator)
    if type(evaluator)._fit_module is not Lightning._fit_module or type(evaluator)._run is not Lightning._run:
        return f"{type(evaluator).__name__} fits its module its own way"
    module = evaluator.module
    if not module.automatic_optimization:
        return f"{type(module).__name__} optimizes manually (automatic_optimization=False)"
    overridden = [hook for hook in _OPTIMIZATION_HOOKS if is_overridden(hook, module)]
    if overridden:
        return f"{type(module).__name__} overrides {', '.join(overridden)}"
    options = evaluator._trainer_arguments()
    for name, neutral in _UNPACKABLE_TRAINER.items():
        if options.get(name, neutral) not in (neutral, [], 0):
            return (
                f"its Trainer sets {name}={options[name]!r}, which applies to the pack, not to each candidate"
            )
    if str(options.get("precision", "32")) in ("16", "16-mixed"):
        return "its Trainer trains in float16 with a gradient scaler shared by the pack"
    return ""


class PackModule(pl.LightningModule):
    """The candidates of a pack as one LightningModule (manual optimization, see the module's doc)."""

    def __init__(
        self,
        candidates: list[_Candidate],
        outcomes: list[PackedOutcome | None],
        *,
        report: bool,
        bare: bool,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.candidates = candidates
        self.outcomes = outcomes  # every member's, by index: a candidate's is set when it leaves
        self.report = report  # the candidates' validation metrics become their reports
        self.bare = bare  # ... as the 'default' number alone (NNI's Classification)
        self.fused_step = FusedStep()
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
        object.__setattr__(module, "_current_fx_name", hook)  # (nn.Module's own setattr is slow)
        saved = {name: os.environ.get(name) for name in OUTPUT_DIR_VARS}
        os.environ.update({name: str(candidate.member.output_dir) for name in OUTPUT_DIR_VARS})
        candidate.rng.swap_in()  # (the pack's fit keeps the caller's generators: see _fit)
        try:
            with use_reporter(candidate.reporter):
                _RUNNING[0] = candidate.member
                try:
                    yield
                finally:
                    _RUNNING[0] = None
        finally:
            candidate.rng.swap_out()
            object.__setattr__(module, "_current_fx_name", before)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def leave(self, candidate: _Candidate, error: BaseException | None = None, stopped: str = "") -> None:
        """Take a candidate out of the pack (failed with ``error``, or ``stopped``); the rest go on."""
        if error is not None:
            outcome = PackedOutcome(error, _traceback(error))
            print(f"retia: pack candidate {candidate.index} failed: {type(error).__name__}: {error}")
            print(outcome.traceback, end="", flush=True)
        else:
            outcome = PackedOutcome(stopped=stopped)
            print(f"retia: pack candidate {candidate.index} stopped: {stopped}", flush=True)
        for optimizer in candidate.optimizers:
            optimizer.state.clear()  # its memory goes back (the device's, on a GPU)
        candidate.optimizers = []
        candidate.module.requires_grad_(False)
        _end(candidate, self.outcomes, outcome)
        if not self.alive():
            self.trainer.should_stop = True

    def failed(self, candidate: _Candidate, error: Exception) -> None:
        """A candidate's code raised: it leaves the pack, unless the pack ran out of memory, which
        is the pack's to answer (split in halves), not this candidate's fault."""
        if isinstance(error, StopCandidate):
            self.leave(candidate, stopped=str(error))
            return
        if _out_of_memory(error) and len(self.alive()) > 1:
            raise error
        self.leave(candidate, error)

    # ---- optimizers ----

    def configure_optimizers(self) -> Any:
        def configure(candidate: _Candidate) -> None:
            optimizers, schedules = split_optimizers(candidate.module.configure_optimizers())
            if len(optimizers) != 1:
                raise ConfigError(
                    f"{type(candidate.module).__name__}.configure_optimizers gave {len(optimizers)} "
                    "optimizers; Lightning's automatic optimization takes exactly one"
                )
            candidate.optimizers, candidate.schedules = optimizers, schedules
            # none of its code may run between its backward and the next batch: the pack does both
            candidate.fused = (
                not schedules
                and fusable(optimizers[0])
                and not any(candidate.overrides(hook) for hook in _AFTER_BACKWARD_HOOKS)
            )

        self._each("configure_optimizers", configure)
        return [optimizer for candidate in self.alive() for optimizer in candidate.optimizers]

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
        fused: list[tuple[_Candidate, torch.Tensor]] = []
        for candidate in self.alive():
            reason = candidate.member.stop()
            if reason:
                self.leave(candidate, stopped=reason)
                continue
            try:
                stepped |= self._train(candidate, batch, batch_idx, fused)
            except Exception as exc:  # this candidate's trial fails; the pack trains on
                self.failed(candidate, exc)
        if fused:
            self._step_fused(fused)
        if stepped:
            _count_step(self.trainer)

    def _train(
        self, candidate: _Candidate, batch: Any, batch_idx: int, fused: list[tuple[_Candidate, torch.Tensor]]
    ) -> bool:
        """One training step of one candidate, as Lightning's automatic optimization does it; a
        :attr:`_Candidate.fused` one leaves its backward and optimizer step to the pack (its loss
        added to ``fused``)."""
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
            if candidate.fused:
                clear_gradients(optimizer)
                module.on_before_backward(loss)
                fused.append((candidate, loss))
                return True
            optimizer.zero_grad()
            module.on_before_backward(loss)
            module.backward(loss)
            module.on_after_backward()
            module.on_before_optimizer_step(optimizer)
            optimizer.step()
            module.on_train_batch_end(out, batch, batch_idx)
            self._step_schedules(candidate, "step")
        return True

    def _step_fused(self, fused: list[tuple[_Candidate, torch.Tensor]]) -> None:
        """The backward and optimizer step of the candidates that left theirs to the pack: one
        backward over their losses, one :class:`FusedStep` over their optimizers (each one's own
        arithmetic and state, dispatched once: a small model's backward and Adam step cost more in
        calls than in arithmetic). A backward that raises is done again candidate by candidate, so
        that only the one whose graph raises fails."""
        try:
            torch.autograd.backward([loss for _, loss in fused], retain_graph=True)
            stepping = [candidate for candidate, _ in fused]
        except Exception as exc:
            if _out_of_memory(exc) and len(self.alive()) > 1:
                raise  # the pack's to answer (split in halves)
            stepping = self._backward_each(fused)
        fused.clear()  # (their graphs go)
        together = []
        for candidate in stepping:
            if not _sparse_gradients(candidate.optimizers[0]):
                together.append(candidate)
                continue
            try:  # on its own: Adam refuses sparse gradients, and that fails this candidate alone
                candidate.optimizers[0].step()
            except Exception as exc:
                self.failed(candidate, exc)
        try:
            self.fused_step.step([candidate.optimizers[0] for candidate in together])
        except Exception as exc:  # (no candidate's code runs in there: the pack's memory, say)
            for candidate in together:
                self.failed(candidate, exc)

    def _backward_each(self, fused: list[tuple[_Candidate, torch.Tensor]]) -> list[_Candidate]:
        """Each candidate's backward on its own (after a shared one raised): those it fails leave."""
        done = []
        for candidate, loss in fused:
            clear_gradients(candidate.optimizers[0])  # (what the shared one accumulated)
            try:
                with self.running(candidate, "backward"):
                    loss.backward()
                done.append(candidate)
            except Exception as exc:
                self.failed(candidate, exc)
        return done

    def validation_step(self, batch: Any, batch_idx: int, *args: Any) -> None:
        self._each("validation_step", lambda c: c.module.validation_step(batch, batch_idx, *args))

    # ---- hooks ----

    def _each(self, hook: str, call: Callable[[_Candidate], object], overridden: bool = False) -> None:
        """``call`` for each candidate still in the pack (``overridden``: each whose module overrides
        ``hook``), as Lightning's hook ``hook``; a candidate whose code raises leaves the pack."""
        for candidate in self.alive():
            if overridden and not candidate.overrides(hook):
                continue
            try:
                with self.running(candidate, hook):
                    call(candidate)
            except Exception as exc:
                self.failed(candidate, exc)

    def _hook(self, name: str) -> None:
        self._each(name, lambda c: getattr(c.module, name)(), overridden=True)

    def setup(self, stage: str) -> None:
        self._each("setup", lambda c: c.module.setup(stage))

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
        def end_epoch(candidate: _Candidate) -> None:
            candidate.module.on_train_epoch_end()
            self._step_schedules(candidate, "epoch")

        self._each("on_train_epoch_end", end_epoch)

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
                    with self.running(candidate, "on_validation_end"):
                        candidate.reporter.intermediate(_value(candidate, self.bare))
            except Exception as exc:
                self.failed(candidate, exc)


def _value(candidate: _Candidate, bare: bool) -> Metric:
    """A candidate's last validation metrics as it reports them: the dict, or 'default' alone."""
    if candidate.last is None:
        raise ConfigError(
            "no validation metric was logged, so there is nothing to report: give val_dataloaders "
            "and log at least one metric in validation_step"
        )
    return candidate.last["default"] if bare else candidate.last


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


def _sparse_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether one of the optimizer's gradients is sparse."""
    return any(p.grad is not None and p.grad.is_sparse for g in optimizer.param_groups for p in g["params"])


def _count_step(trainer: pl.Trainer) -> None:
    """One optimizer step for the pack's trainer (its ``global_step``, ``max_steps``, step-interval
    validation), as Lightning counts one for a candidate trained alone; the candidates' own
    optimizers step outside Lightning's wrappers, which would count one per candidate."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    progress.increment_ready()
    progress.increment_completed()


def fit_pack(evaluator: Lightning, members: Sequence[PackMember]) -> list[PackedOutcome]:
    """Train ``members`` together with ``evaluator``'s module, data and trainer: each reports as
    it would alone (its seed's result); the outcome of each, in order (each is also given to its
    member's ``ended`` as soon as it is known). A pack that runs out of memory is trained again
    in two halves, one after the other (NNI's "retry one by one"), each candidate's reports
    going on from where they were (a seeded run repeats itself), as the log says."""
    reason = unpackable(evaluator)
    if reason:
        raise ConfigError(f"these trials cannot be packed: {reason}")
    auto_report = evaluator._auto_report()
    if auto_report and members:
        evaluator._check_data()
    reporters = [_MemberReporter(member.reporter) for member in members]
    outcomes: list[PackedOutcome | None] = [None] * len(members)
    _run_pack(evaluator, list(enumerate(members)), reporters, outcomes, auto_report)
    return [outcome or PackedOutcome() for outcome in outcomes]


def _run_pack(
    evaluator: Lightning,
    members: list[tuple[int, PackMember]],
    reporters: list[_MemberReporter],
    outcomes: list[PackedOutcome | None],
    auto_report: bool,
) -> None:
    """Build and train these members as one pack; split it in halves when it runs out of memory."""
    candidates = [c for c in (_candidate(evaluator, i, m, reporters[i], outcomes) for i, m in members) if c]
    if not candidates:
        return
    try:
        _fit(evaluator, candidates, outcomes, auto_report)
    except Exception as exc:
        left = [c for c in candidates if c.alive]
        if not (_out_of_memory(exc) and len(left) > 1):
            for candidate in left:
                _end(candidate, outcomes, PackedOutcome(exc, _traceback(exc)))
            return
        print(
            f"retia: the pack of {len(left)} ran out of memory ({type(exc).__name__}: {_first_line(exc)}); "
            f"training it again as packs of {(len(left) + 1) // 2} and {len(left) // 2}",
            flush=True,
        )
        again = [(c.index, c.member) for c in left]
    else:
        again = []
    if again:  # (out of the except clause: its traceback, which holds the failed pack, is gone)
        del candidates, left
        half = (len(again) + 1) // 2
        for part in (again[:half], again[half:]):
            _free_memory()  # what the failed pack (then the first half) held
            for index, _member in part:
                reporters[index].replay()
            _run_pack(evaluator, part, reporters, outcomes, auto_report)
        return
    for candidate in candidates:
        if candidate.alive:
            outcome = PackedOutcome()
            if auto_report:
                try:
                    with use_reporter(candidate.reporter):
                        candidate.reporter.final(_value(candidate, evaluator.bare_metric))
                except Exception as exc:
                    outcome = PackedOutcome(exc, _traceback(exc))
            _end(candidate, outcomes, outcome)


def _candidate(
    evaluator: Lightning,
    index: int,
    member: PackMember,
    reporter: _MemberReporter,
    outcomes: list[PackedOutcome | None],
) -> _Candidate | None:
    """The member's copy of the module around its model, built under its seed (None: it failed)."""
    rng = seeding.RngState.fresh(member.seed)
    candidate = _Candidate(index, member, reporter, pl.LightningModule(), rng)
    try:
        with rng.active(), use_reporter(reporter):
            module = copy.deepcopy(evaluator.module)
            module.set_model(model_factory(member.model))
    except Exception as exc:
        _end(candidate, outcomes, PackedOutcome(exc, _traceback(exc)))
        return None
    candidate.module = module
    return candidate


def _end(candidate: _Candidate, outcomes: list[PackedOutcome | None], outcome: PackedOutcome) -> None:
    """The candidate's outcome is known: kept, and told to its member at once."""
    candidate.alive = False
    outcomes[candidate.index] = outcome
    if candidate.member.ended is not None:
        candidate.member.ended(outcome)


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _out_of_memory(exc: BaseException) -> bool:
    """The device (or, under a memory limit, this process) had no memory left for an allocation."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_memory() -> None:
    """What a failed pack held goes back before its halves start."""
    import ctypes
    import gc

    gc.collect()
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.empty_cache()
    try:  # glibc keeps freed heap memory for reuse (counted against a memory cap): give it back
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


class _MemberReporter(Reporter):
    """A member's reporter in its pack: counts what it delivered, so that after a split the
    candidate's run again skips the reports it already sent (a seeded run repeats itself)."""

    def __init__(self, inner: Reporter) -> None:
        super().__init__()
        self.inner = inner
        self.sent = 0  # intermediate reports delivered
        self._skip = 0

    def replay(self) -> None:
        """The candidate trains again from the start: its first ``sent`` reports are not sent again."""
        self._skip, self.final_reported = self.sent, False

    def _emit(self, final: bool, value: Metric) -> None:
        if final:
            self.inner.final(value)
        elif self._skip:
            self._skip -= 1
        else:
            self.sent += 1
            self.inner.intermediate(value)

    def checkpoint(self) -> None:
        self.inner.checkpoint()


def _fit(
    evaluator: Lightning,
    candidates: list[_Candidate],
    outcomes: list[PackedOutcome | None],
    auto_report: bool,
) -> None:
    pack = PackModule(candidates, outcomes, report=auto_report, bare=evaluator.bare_metric)
    out = candidates[0].member.output_dir
    stream = seeding.RngState.fresh(seeding.DATA_SEED)
    loaders = seeding.drawing_from(
        stream, [evaluator.train_dataloaders, evaluator.val_dataloaders], [evaluator.datamodule]
    )
    callback = support.ReportingCallback(None, report=False)
    outside = seeding.RngState()  # what the generators held before: theirs again after the fit
    with (
        outside.active(),
        support.quiet(),
        support.interrupts(callback, detect=evaluator.detect_interrupt),
        loaders,
    ):
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
    if output_dirs is not None and len(output_dirs) != len(models):
        raise ConfigError(f"give one output directory per model ({len(models)}), or none")
    dirs = [Path(os.path.abspath(d)) for d in (output_dirs or [_fresh_run_dir() for _ in models])]
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
