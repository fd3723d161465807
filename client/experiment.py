"""``Experiment``: the search loop joining a strategy to a backend (embedded or remote).

Data flow::

    strategy.ask --arch--> Backend.submit --> dispatcher --> workers
    strategy.tell/report <-- event queue <-- Backend listener (I/O thread) <-- dispatcher

The loop keeps ``concurrency`` trials in flight, writes every submission (before it is sent)
and every result to the experiment directory, and can be resumed after a crash: trial ids
are derived from the experiment id and the trial number, so nothing runs twice.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from retia.arch import merge_spaces
from retia.errors import ConfigError
from retia.evaluator import Evaluator
from retia.protocol import Event, TrialState
from retia.reporting import Metric, default_value
from retia.searchspace import Choice, SpaceDescription
from retia.seeding import check_seed, trial_seed
from retia.serializer import dump, load

from .backend import Backend, Trial, check_gpus, connect, pack_size
from .cluster import local_cluster
from .experiment_config import ExperimentConfig, RunArguments, logging_level, split_config_and_port
from .live import LiveView
from .results import ExperimentRecord, ExperimentSettings, TrialResult, scored

__all__ = ["Experiment", "RetiariiExperiment"]

_log = logging.getLogger(__name__)
_Event = tuple[Trial, Event]


class Experiment:
    """Search ``model_space`` with ``strategy``, evaluating each architecture with ``evaluator``."""

    def __init__(
        self,
        model_space: Any,
        evaluator: Evaluator,
        strategy: Any,
        mutators: Any = None,
        *,
        path: str | Path | None = None,
        direction: str | None = None,
        config: ExperimentConfig | None = None,
        seed: int | None = None,
    ) -> None:
        """``seed``: the experiment's; its k-th trial runs under ``trial_seed(f"{seed}/{k}")``, so the
        same search gives the same trials' results again (None: each trial's own id's seed, which
        differs from experiment to experiment)."""
        if seed is not None:
            check_seed(seed, "the experiment's seed")
        if mutators:  # None or [] (NNI passes either when the space holds its own choices)
            raise ConfigError(
                f"mutators are not supported ({len(mutators)} given): express each mutation as a choice "
                "inside the ModelSpace (retia.nn.LayerChoice, InputChoice, ValueChoice), which the "
                "strategy then samples"
            )
        if strategy is None:
            raise ConfigError("a strategy is needed, e.g. retia.strategy.Random() or RegularizedEvolution()")
        if not hasattr(model_space, "search_space"):
            raise ConfigError(
                f"model_space must be a retia.nn.ModelSpace instance, got {type(model_space).__name__}"
            )
        if not isinstance(evaluator, Evaluator):
            raise ConfigError(f"evaluator must be a retia Evaluator, got {type(evaluator).__name__}")
        direction = direction or evaluator.direction
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
        self.model_space = model_space
        self.evaluator = evaluator
        self.strategy = strategy
        self.direction = direction
        self.seed = seed
        self.search_space()  # the model's and the evaluator's choices agree, or an error now
        if getattr(strategy, "trains_supernet", False):
            self._one_shot_parts()  # the evaluator and the space suit the strategy, or an error now
        self.id = f"exp-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.path = Path(path) if path is not None else Path("retia-experiments") / self.id
        self.record = ExperimentRecord(self.path)
        self._settings: ExperimentSettings | None = None
        self._strategy_blob = dump(strategy, name="strategy")
        self._stop_requested = threading.Event()
        self._path_given = path is not None
        self.config = config if config is not None else ExperimentConfig("local")  # NNI's exp.config
        self.port: int | None = None  # the dashboard's, from run(config, port)
        self.dashboard_url: str | None = None  # where run(dashboard=PORT) served it

    # ---- after the fact ----

    @classmethod
    def load(cls, path: str | Path) -> Experiment:
        """Open a finished (or crashed) experiment's directory: results, export, report, resume."""
        record = ExperimentRecord(Path(path))
        settings = record.settings()
        exp = cls.__new__(cls)
        exp.path, exp.record, exp._settings = Path(path), record, settings
        exp.id, exp.direction, exp.seed = settings.experiment_id, settings.direction, settings.seed
        exp.model_space = load(record.blob("space.bin"))
        exp.evaluator = load(record.blob("evaluator.bin"))
        exp._strategy_blob = record.blob("strategy.bin")
        exp.strategy = load(exp._strategy_blob)
        exp._stop_requested = threading.Event()
        exp._path_given, exp.config, exp.port, exp.dashboard_url = True, ExperimentConfig("local"), None, None
        record.load()
        return exp

    @classmethod
    def resume(cls, path: str | Path, **run_kwargs: Any) -> Experiment:
        """Continue a crashed experiment within the budget it was started with (unless ``run_kwargs``
        give another): finished trials are kept, in-flight ones are re-attached; a finished one
        resumes to nothing."""
        exp = cls.load(path)
        exp.run(**run_kwargs)
        return exp

    def stop(self) -> None:
        """End the running search (from another thread, a callback, a signal handler): no trial is
        submitted any more, those in flight are cancelled and recorded CANCELLED, and ``run`` returns
        what finished."""
        self._stop_requested.set()

    def search_space(self) -> dict[str, list[Any]]:
        """What the strategy searches: the model space's choices, then those among the evaluator's
        arguments (a label both use is one decision)."""
        return merge_spaces(self.model_space.search_space(), self.evaluator.search_space())

    def describe_space(self) -> SpaceDescription:
        """:meth:`search_space` with each choice's kind, default, prior and requirements (what the
        strategy is attached to): the model space's ``describe()``, then the evaluator's choices."""
        describe = getattr(self.model_space, "describe", None)
        if callable(describe):
            arch_check = getattr(self.model_space, "arch_check", None)  # its validity beyond the options
            model = SpaceDescription.from_json(
                describe(), check=arch_check() if callable(arch_check) else None
            )
        else:
            model = SpaceDescription.from_flat(self.model_space.search_space())
        own = SpaceDescription(tuple(Choice.from_spec(spec) for spec in self.evaluator._choices().values()))
        return model.merged(own)

    def _one_shot_parts(self) -> tuple[Any, Evaluator]:
        """What a one-shot strategy's trial ships: the supernet's recipe, and the evaluator that
        trains it around the user's."""
        from retia.oneshot import OneShotEvaluator, supernet_of

        return supernet_of(self.model_space), OneShotEvaluator(self.evaluator, self.strategy)

    @property
    def results(self) -> list[TrialResult]:
        return [self.record.results[k] for k in sorted(self.record.results)]

    def export_top_models(self, top_k: int = 1, formatter: str = "dict") -> list[Any]:
        """The best architectures: dicts for ``fixed_arch`` (with the evaluator's searched arguments,
        if any: ``evaluator.freeze(arch)`` takes them), or built models with ``formatter='instance'``."""
        if formatter not in ("dict", "instance"):
            raise ConfigError(f"formatter must be 'dict' or 'instance', got {formatter!r}")
        done = scored(self.results)
        done.sort(key=lambda pair: pair[0], reverse=self.direction == "maximize")
        best = [dict(r.arch) for _, r in done[:top_k]]
        if formatter == "instance":
            labels = self.model_space.search_space()
            return [self.model_space.freeze({k: v for k, v in arch.items() if k in labels}) for arch in best]
        return best

    # ---- the loop ----

    def run(
        self,
        config_or_port: ExperimentConfig | int | None = None,
        port: int | None = None,
        *,
        max_trials: int | None = None,
        concurrency: int | None = None,
        max_duration: float | None = None,
        address: str | None = None,
        key: bytes | str | None = None,
        workers: int | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        key_file: str | Path | None = None,
        credential: str | Path | None = None,
        live: bool | None = None,
        debug: bool = False,
        pack: int = 1,
        trial_gpus: int | None = None,
        dashboard: int | None = None,
    ) -> list[TrialResult]:
        """Run until ``max_trials`` have finished (default 20, or the budget it was started with when
        resumed), the strategy is exhausted, ``max_duration`` seconds pass, or :meth:`stop` is called.

        ``pack`` > 1 trains up to that many candidates together in one process on the same batches
        (``Backend.submit_many``'s ``pack``; the results are those of each alone with its seed), and
        ``concurrency`` then defaults to two packs in flight (``2 * pack``); an evaluator that cannot
        share a process (a ``FunctionalEvaluator``) runs one trial per process, with one warning.

        ``trial_gpus`` (NNI's ``trial_gpu_number``): the GPUs each trial asks for
        (``Backend.submit``'s ``gpus``): on a cluster, it runs on a worker with at least that many;
        a private local cluster groups this machine's GPUs that many to a worker (0: CPU workers).

        NNI's ``run(config, port)`` and ``run(port=...)``: an ExperimentConfig (else ``self.config``)
        gives what these arguments do not (retia.client.experiment_config); ``port`` is kept as
        ``self.port``. On a cluster: ``credential`` (a client credential file; its address is the
        default), or ``address`` with the cluster key (``key``, ``key_file``); neither: a private
        local cluster.

        ``dashboard``: a port (0: any free one) where ``retia dashboard`` serves this experiment on
        loopback while it runs (its URL is printed to stderr and kept as ``self.dashboard_url``)."""
        pack = pack_size(pack, self.evaluator)  # an evaluator that cannot pack: 1, said once, not per trial
        check_gpus(trial_gpus, "trial_gpus")
        config, port = split_config_and_port(config_or_port, port)
        if config is not None:
            self.config = config
        if port is not None:
            self.port = port
        if self._settings is not None:
            address = address or self._settings.address
        plan = self.config.run_arguments(
            max_trials=max_trials,
            concurrency=concurrency,
            max_duration=max_duration,
            timeout=timeout,
            workers=workers,
            trial_gpus=trial_gpus,
            private_cluster=address is None and credential is None,
            debug=debug,
        )
        with logging_level(plan.log_level):
            return self._run(plan, address, key, key_file, credential, max_retries, live, pack, dashboard)

    def _run(
        self,
        plan: RunArguments,
        address: str | None,
        key: bytes | str | None,
        key_file: str | Path | None,
        credential: str | Path | None,
        max_retries: int,
        live: bool | None,
        pack: int = 1,
        dashboard: int | None = None,
    ) -> list[TrialResult]:
        max_trials, concurrency = plan.max_trials, plan.concurrency
        saved = self._settings
        if max_trials is None:
            max_trials = saved.max_trials if saved is not None else 20
        if concurrency is None:
            concurrency = 2 * pack if pack > 1 else saved.concurrency if saved is not None else 2
        if max_trials < 1 or concurrency < 1:
            raise ConfigError(f"max_trials and concurrency must be >= 1 (got {max_trials}, {concurrency})")
        if self._settings is None:
            self._place(plan.working_directory)
            self._settings = ExperimentSettings(
                self.id,
                f"{self.id}-client",
                self.direction,
                max_trials,
                concurrency,
                address,
                time.time(),
                self.seed,
            )
            self.record.create(
                self._settings,
                {
                    "space.bin": dump(self.model_space, name="model_space"),
                    "evaluator.bin": dump(self.evaluator, name="evaluator"),
                    "strategy.bin": self._strategy_blob,
                },
            )
        if plan.name:
            _log.info("experiment %r (%s) in %s", plan.name, self.id, self.path)
        with (
            self._dashboard(dashboard),
            self._backend(address, key, key_file, credential, plan.workers, plan.gpus) as backend,
        ):
            loop = _Loop(
                self, backend, max_trials, concurrency, plan.max_duration, plan.timeout, max_retries, live
            )
            loop.pack, loop.gpus = pack, plan.trial_gpus
            return loop.run()

    @contextlib.contextmanager
    def _dashboard(self, port: int | None) -> Iterator[None]:
        """``retia dashboard`` over this experiment's directory on loopback while the search runs."""
        if port is None:
            yield
            return
        from .dashboard import DashboardServer, ExperimentSource, create_app

        server = DashboardServer(create_app(ExperimentSource(self.path)), "127.0.0.1", port)
        self.dashboard_url = server.url
        print(f"retia dashboard: {server.url}", file=sys.stderr, flush=True)
        with server:
            yield

    def _place(self, working_directory: Path | None) -> None:
        """NNI's experiment_working_directory: the experiment directory is made there (unless path= was)."""
        if working_directory is None:
            return
        if self._path_given:
            raise ConfigError(
                f"the experiment was given path={str(self.path)!r} and its config an "
                f"experiment_working_directory ({str(working_directory)!r}): give one of them"
            )
        self.path = working_directory / self.id
        self.record = ExperimentRecord(self.path)

    @contextlib.contextmanager
    def _backend(
        self,
        address: str | None,
        key: Any,
        key_file: Any,
        credential: Any,
        workers: int | None,
        gpus: list[str] | None = None,
    ) -> Iterator[Backend]:
        client_id = self._settings.client_id if self._settings else None
        if address is not None or credential is not None:
            backend = connect(address, key=key, key_file=key_file, credential=credential, client_id=client_id)
            try:
                yield backend
            finally:
                backend.close()
            return
        with local_cluster(workers, home=self.path / "cluster", gpus=gpus, client_id=client_id) as backend:
            yield backend


class _Loop:
    """One run of the search loop; all strategy calls happen on this (the caller's) thread."""

    def __init__(
        self,
        exp: Experiment,
        backend: Backend,
        max_trials: int,
        concurrency: int,
        max_duration: float | None,
        timeout: float | None,
        max_retries: int,
        live: bool | None,
    ) -> None:
        self.exp, self.backend = exp, backend
        self.max_trials, self.concurrency = max_trials, concurrency
        self.deadline = None if max_duration is None else time.monotonic() + max_duration
        self.timeout, self.max_retries = timeout, max_retries
        self.sign = 1.0 if exp.direction == "maximize" else -1.0
        self.events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self.running: dict[str, int] = {}  # trial id -> key
        self.steps: dict[int, int] = {}
        self.view = LiveView(exp, backend, enabled=live)
        self.exhausted = False
        self.one_shot: bool = getattr(exp.strategy, "trains_supernet", False)
        self.pack = 1  # candidates trained together in one process (the supernet's trial: alone)
        self.gpus: int | None = None  # what each trial asks for (None: what its worker has)

    def run(self) -> list[TrialResult]:
        strategy, record = self.exp.strategy, self.exp.record
        self.exp.search_space()  # (the model's and the evaluator's choices agree)
        strategy.attach(self.exp.describe_space())
        self.backend.add_listener(lambda trial, event: self.events.put((trial, event)))
        for result in record.results.values():
            if TrialState(result.state).finished:
                strategy.tell(result.key, result.arch, self._value(result.final))
            else:
                self._submit(result, resubmit=True)
        stop = self.exp._stop_requested
        stop.clear()
        with self.view:
            while True:
                if stop.is_set() and not self.exhausted:
                    self._stop_all("stopped: Experiment.stop()")
                self._fill()
                if not self.running:
                    break
                self._drain()
                self._raise_if_lost()
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self._stop_all("max_duration reached")
                self.view.refresh()
        return self.exp.results

    def _raise_if_lost(self) -> None:
        """The cluster is gone (its dispatcher, or every local worker): end the run with the reason."""
        error = self.backend.lost
        if error is not None:
            path = self.exp.path
            raise type(error)(
                f"{error} The experiment is saved in {path}: Experiment.resume({str(path)!r}) continues it."
            ) from error

    def _fill(self) -> None:
        record = self.exp.record
        while (
            not self.exhausted
            and len(self.running) < self.concurrency
            and len(record.results) < self.max_trials
            and (self.deadline is None or time.monotonic() < self.deadline)
        ):
            key = len(record.results)
            arch = self.exp.strategy.ask(key)
            if arch is None:
                self.exhausted = True
                _log.info("the strategy is exhausted after %d trials", key)
                return
            trial_id = f"{self.exp.id}-{key:06d}"
            seed = trial_seed(trial_id if self.exp.seed is None else f"{self.exp.seed}/{key}")
            result = TrialResult(key, trial_id, dict(arch), submitted=time.time(), seed=seed)
            record.append_submit(result)  # written before it is sent: a crash cannot lose it
            self._submit(result)

    def _submit(self, result: TrialResult, *, resubmit: bool = False) -> None:
        model, evaluator = self.exp.model_space, self.exp.evaluator
        arch: dict[str, Any] | None = result.arch
        if self.one_shot:  # the supernet, trained by the strategy around the user's evaluator
            (model, evaluator), arch = self.exp._one_shot_parts(), None
        trial = self.backend.submit(
            model,
            evaluator,
            arch=arch,
            timeout=self.timeout,
            max_retries=self.max_retries,
            name=f"#{result.key}",
            trial_id=result.trial_id,
            pack=1 if self.one_shot else self.pack,
            seed=result.seed,  # None (recorded before trial seeds): its own, trial_seed of its id
            gpus=self.gpus,
        )
        self.running[result.trial_id] = result.key
        if resubmit:
            _log.info("re-attached trial #%d (%s)", result.key, result.trial_id)
            if trial.done() and trial.change is not None:  # its events were replayed before the loop listened
                self.events.put((trial, Event(0, state=trial.change)))

    def _drain(self) -> None:
        try:
            event = self.events.get(timeout=0.5)
        except queue.Empty:
            return
        while True:
            self._on_event(*event)
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return

    def _on_event(self, trial: Trial, event: Event) -> None:
        key = self.running.get(trial.id)
        if key is None:
            return
        strategy = self.exp.strategy
        if event.report is not None:
            if event.report.final:
                return
            self.steps[key] = self.steps.get(key, 0) + 1
            strategy.report(key, self.steps[key], self.sign * default_value(event.report.metric))
            running_keys = {k: t for t, k in self.running.items()}
            for stop_key in strategy.to_stop(list(running_keys)):
                if stop_key in running_keys:
                    self.backend.trials[running_keys[stop_key]].cancel("stopped early by the strategy")
            return
        change = event.state
        if change is None:
            return
        if change.state is TrialState.RUNNING and change.attempt > 1:
            self.steps[key] = 0
        if not change.state.finished:
            return
        result = self.exp.record.results[key]
        result.state, result.final, result.attempt = change.state.value, trial.final, change.attempt
        result.intermediates = list(trial.intermediates)
        result.reason = change.reason or (change.failure.message if change.failure else "")
        result.finished = time.time()
        result.output_dir, result.devices = change.output_dir, change.devices
        if self.one_shot and result.final is not None:  # the architecture the supernet's training chose
            from retia.oneshot import arch_from_metric

            result.arch = arch_from_metric(result.final, self.exp.model_space.search_space()) or {}
        self.exp.record.append_result(result)
        del self.running[trial.id]
        value = self._value(result.final) if change.state is TrialState.SUCCEEDED else None
        strategy.tell(key, result.arch, value)
        self.view.trial_finished(result)

    def _value(self, final: Metric | None) -> float | None:
        return None if final is None else self.sign * default_value(final)

    def _stop_all(self, reason: str) -> None:
        self.exhausted = True
        for trial_id in list(self.running):
            self.backend.trials[trial_id].cancel(reason)


class RetiariiExperiment(Experiment):
    """NNI 2.x's name and argument order: ``(base_model, evaluator, mutators=None, strategy=None)``."""

    def __init__(
        self,
        base_model: Any,
        evaluator: Evaluator,
        mutators: Any = None,
        strategy: Any = None,
        *,
        path: str | Path | None = None,
        direction: str | None = None,
    ) -> None:
        super().__init__(base_model, evaluator, strategy, mutators, path=path, direction=direction)
