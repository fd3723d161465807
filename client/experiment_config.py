"""NNI's experiment configuration (``RetiariiExeConfig``, ``NasExperimentConfig``) for ``Experiment.run``.

NNI code builds one of these, sets fields on it and hands it to ``run(config, port)``. Each field is
checked when it is set: the ones retia honours map onto ``run()``'s arguments (see
:meth:`ExperimentConfig.run_arguments`), the ones that need NNI's machinery (its training services,
tuner process, graph engine) are refused naming the field and saying what to do instead, and an
unknown name is refused with the nearest known one.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from retia.errors import ConfigError

from .cluster import detect_gpus

__all__ = [
    "ExperimentConfig",
    "LocalConfig",
    "NasExperimentConfig",
    "RetiariiExeConfig",
    "RunArguments",
    "logging_level",
    "parse_duration",
    "split_config_and_port",
]

_log = logging.getLogger(__name__)

OWN_WORKERS = (
    "retia runs trials on its own workers, not on NNI's training services: start "
    "`retia dispatcher --bind tcp://0.0.0.0:5555` on a head node and `retia worker --credential "
    "worker.cred --gpu N` on each machine (README, 'Running on a cluster'), then call "
    "run(config, address='tcp://head:5555', key_file=...) or run(config, credential='client.cred'); "
    "keep the platform 'local' (without an address, run() starts a private local cluster)"
)
_PLATFORMS = frozenset(
    {"local", "remote", "openpai", "pai", "aml", "dlc", "kubeflow", "frameworkcontroller", "adl", "hybrid"}
)
_RUNS_PYTHON = frozenset({"py", "python", "ts"})  # the model's Python code, each trial on a worker
_ENGINE_REFUSALS = {
    "base": "retia has no graph engine (TorchScript conversion): it runs the Python model as "
    "written; use 'py'",
    "graph": "retia has no graph engine (TorchScript conversion): it runs the Python model as "
    "written; use 'py'",
    "oneshot": "retia's one-shot strategies (retia.strategy.DARTS, ENAS, ...) need no engine of their "
    "own: keep 'py' and give the strategy to the experiment",
    "sequential": "retia runs every trial on its workers, not in this process; for one trial at a "
    "time set trial_concurrency = 1",
    "cgo": "retia packs candidates instead of merging their graphs: keep 'py' and run with "
    "Experiment.run(pack=K) (up to K candidates trained in one process on the same batches)",
    "benchmark": "retia has no NAS-benchmark query engine; use 'py' and train the models",
}
_FORMATS = frozenset({"simplified", "raw"})  # either way the model space travels pickled, as a whole
_LOG_LEVELS = {
    "fatal": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([dhms])\s*$", re.IGNORECASE)


def parse_duration(value: object, name: str = "duration") -> float:
    """NNI's duration: a string with a unit ('1h', '30m', '10s', '2d', '1.5h') or a number of seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ConfigError(
                f"{name} {value!r} is not a duration: write it like '1h', '30m', '10s' or '2d', "
                "or give a number of seconds"
            )
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigError(f"{name} must be a duration like '1h' or a number of seconds (got {value!r})")
    if not 0 < seconds < math.inf:
        raise ConfigError(f"{name} must be positive and finite (got {value!r})")
    return seconds


def _count(value: object, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum} or None (got {value!r})")
    return value


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False (got {value!r})")
    return value


def _snake(name: str) -> str:
    """NNI's JSON spelling (``trialConcurrency``) to its Python one (``trial_concurrency``)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


class _Checked:
    """Every attribute set goes through ``_check_<name>``; an unknown name is an error naming it."""

    _refused: ClassVar[dict[str, str]] = {}  # NNI fields retia cannot honour -> why, for any set value

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]  # subclasses are dataclasses

    def _unknown(self, name: str) -> str:
        cls = type(self).__name__
        close = difflib.get_close_matches(name, self._names(), n=1, cutoff=0.6)
        if close:
            return f"{cls} has no field {name!r}: did you mean {close[0]!r}?"
        return f"{cls} has no field {name!r}; its fields are {', '.join(self._names())}"

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._names():
            raise ConfigError(self._unknown(name))
        check = getattr(self, f"_check_{name}", None)
        if check is not None:
            value = check(value, f"{type(self).__name__}.{name}")
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:  # only called for names that are not there
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(self._unknown(name))

    def _init_fields(self, values: dict[str, Any]) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            if f.name not in values:
                default = f.default_factory() if callable(f.default_factory) else f.default
                object.__setattr__(self, f.name, default)
        for name, value in values.items():
            setattr(self, _snake(name), value)


@dataclass(init=False)
class LocalConfig(_Checked):
    """NNI's local training service: the trials run on this machine, here on a private local cluster.

    ``use_active_gpu`` and ``reuse_mode`` are accepted and have no effect: retia does not probe
    whether a GPU is busy (each worker uses the GPU it was given), and its workers are long-lived.
    """

    platform: str = "local"
    use_active_gpu: bool | None = None
    max_trial_number_per_gpu: int = 1
    gpu_indices: list[int] | None = None
    reuse_mode: bool = False
    trial_gpu_number: int | None = None  # NNI's shortcut: the experiment's own field wins when set

    def __init__(self, **values: Any) -> None:
        self._init_fields(values)

    def _check_platform(self, value: object, name: str) -> str:
        if value == "local":
            return value
        if value in _PLATFORMS:
            raise ConfigError(f"{name} {value!r} is not supported: {OWN_WORKERS}")
        raise ConfigError(f"{name} {value!r} is not a training service; {OWN_WORKERS}")

    def _check_use_active_gpu(self, value: object, name: str) -> bool | None:
        return None if value is None else _flag(value, name)

    def _check_reuse_mode(self, value: object, name: str) -> bool:
        return _flag(value, name)

    def _check_max_trial_number_per_gpu(self, value: object, name: str) -> int:
        count = _count(value, name, 1)
        if count is None:
            raise ConfigError(f"{name} must be an integer >= 1 (got None)")
        return count

    def _check_trial_gpu_number(self, value: object, name: str) -> int | None:
        return _count(value, name, 0)

    def _check_gpu_indices(self, value: object, name: str) -> list[int] | None:
        if value is None:
            return None
        items: list[object]
        if isinstance(value, str):
            items = [part.strip() for part in value.split(",")]
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [value]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ConfigError(f"{name} must be GPU indices like [0, 1], 0 or '0,1' (got {value!r})")
        indices: list[int] = []
        for item in items:
            if isinstance(item, str) and item.isdigit():
                item = int(item)
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise ConfigError(f"{name} must be non-negative GPU indices (got {value!r})")
            indices.append(item)
        if not indices or len(set(indices)) != len(indices):
            raise ConfigError(f"{name} must list distinct GPU indices (got {value!r})")
        return indices


@dataclass(frozen=True)
class RunArguments:
    """What an ExperimentConfig (with run()'s own arguments) asks of one ``Experiment.run``."""

    max_trials: int | None
    concurrency: int | None
    max_duration: float | None
    timeout: float | None  # per trial: NNI's max_trial_duration
    workers: int | None  # for a private local cluster
    gpus: list[str] | None  # for a private local cluster: one entry per worker; None: its default
    log_level: int | None  # for the 'retia' loggers during the run
    working_directory: Path | None
    name: str | None
    trial_gpus: int | None = None  # the GPUs each trial asks for (Backend.submit's gpus)


@dataclass(init=False)
class ExperimentConfig(_Checked):
    """NNI's experiment configuration; ``ExperimentConfig('local', trial_concurrency=2, ...)``.

    Mapped onto ``Experiment.run``: ``max_trial_number`` -> ``max_trials`` (unset: run()'s default,
    20, where NNI has no limit), ``trial_concurrency`` -> ``concurrency`` (and, on a private CPU
    cluster, as many workers), ``max_experiment_duration`` -> ``max_duration``,
    ``max_trial_duration`` -> each trial's ``timeout``, ``trial_gpu_number`` -> ``trial_gpus``, the
    GPUs each trial asks for (and each private local worker owns), ``debug``/``log_level`` -> the
    'retia' loggers' level during the run, ``experiment_working_directory`` -> the folder the
    experiment directory is made in.
    """

    experiment_name: str | None = None
    experiment_type: str = "nas"
    search_space: Any = None
    search_space_file: str | Path | None = None
    trial_command: str | None = None
    trial_code_directory: str | Path = "."
    trial_concurrency: int | None = None
    trial_gpu_number: int | None = None
    max_experiment_duration: str | int | float | None = None
    max_trial_number: int | None = None
    max_trial_duration: str | int | float | None = None
    nni_manager_ip: str | None = None  # accepted, unused: workers connect to the dispatcher
    use_annotation: bool = False
    debug: bool = False
    log_level: str | None = None
    experiment_working_directory: str | Path | None = None
    tuner_gpu_indices: Any = None
    tuner: Any = None
    assessor: Any = None
    advisor: Any = None
    training_service: LocalConfig = field(default_factory=LocalConfig)
    shared_storage: Any = None
    execution_engine: str = "py"
    model_format: str = "simplified"

    _refused: ClassVar[dict[str, str]] = {
        "search_space_file": "the search space is the model space's choices (and the evaluator's): "
        "it cannot be given separately",
        "tuner": "retia has no tuner process: pass a strategy to the experiment (retia.strategy.Random(), "
        "TPE(), RegularizedEvolution(), ...)",
        "advisor": "retia has no tuner process: pass a strategy to the experiment (retia.strategy.Random(), "
        "TPE(), ...)",
        "assessor": "retia has no assessor process: give the strategy an early stop, e.g. "
        "retia.strategy.Random(early_stop=MedianStop())",
        "tuner_gpu_indices": "retia has no tuner process: the strategy runs in the process that calls run()",
        "shared_storage": "retia needs no shared storage: each trial's outputs come back to the "
        "experiment directory",
    }

    def __init__(self, training_service_platform: str | None = None, **values: Any) -> None:
        if training_service_platform is not None:
            values.setdefault("training_service", {"platform": training_service_platform})
        self._init_fields(values)

    # ---- checks, one per field (``_Checked.__setattr__`` calls them) ----

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._refused and value is not None:
            raise ConfigError(f"{type(self).__name__}.{name} is not supported: {self._refused[name]}")
        super().__setattr__(name, value)

    def _check_experiment_name(self, value: object, name: str) -> str | None:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string (got {value!r})")
        return value

    def _check_experiment_type(self, value: object, name: str) -> str:
        if value != "nas":
            raise ConfigError(
                f"{name} must be 'nas' (got {value!r}): retia runs NAS experiments; to tune "
                "hyper-parameters, put choices in the model space or the evaluator's arguments"
            )
        return value

    def _check_search_space(self, value: object, name: str) -> Any:
        if value in (None, "", {}, "_reserved_"):  # NNI's NAS configs keep it empty
            return None
        raise ConfigError(f"{name} is not supported: {self._refused['search_space_file']}")

    def _check_trial_command(self, value: object, name: str) -> str | None:
        if value in (None, "", "_reserved"):
            return None
        raise ConfigError(
            f"{name} is not supported: retia's workers run the evaluator themselves; "
            "there is no trial command"
        )

    def _check_trial_code_directory(self, value: object, name: str) -> str | Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{name} must be a path (got {value!r})")
        if Path(value).resolve() != Path.cwd().resolve():
            raise ConfigError(
                f"{name} {str(value)!r} is not supported: retia copies no code directory; the model space "
                "and the evaluator travel pickled and import their modules on the worker, so those "
                "modules must be importable there (installed, or on its PYTHONPATH)"
            )
        return value

    def _check_trial_concurrency(self, value: object, name: str) -> int | None:
        return _count(value, name, 1)

    def _check_max_trial_number(self, value: object, name: str) -> int | None:
        return _count(value, name, 1)

    def _check_trial_gpu_number(self, value: object, name: str) -> int | None:
        return _count(value, name, 0)

    def _check_max_experiment_duration(self, value: Any, name: str) -> Any:
        if value is not None:
            parse_duration(value, name)
        return value

    _check_max_trial_duration = _check_max_experiment_duration

    def _check_nni_manager_ip(self, value: object, name: str) -> str | None:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string (got {value!r})")
        return value

    def _check_use_annotation(self, value: object, name: str) -> bool:
        if _flag(value, name):
            raise ConfigError(
                f"{name} is not supported: NNI annotations describe hyper-parameter searches; "
                "write the choices in the model space"
            )
        return False

    def _check_debug(self, value: object, name: str) -> bool:
        return _flag(value, name)

    def _check_log_level(self, value: object, name: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or value.lower() not in _LOG_LEVELS:
            raise ConfigError(f"{name} must be one of {', '.join(_LOG_LEVELS)} (got {value!r})")
        return value.lower()

    def _check_experiment_working_directory(self, value: object, name: str) -> str | Path | None:
        if value is not None and not isinstance(value, (str, Path)):
            raise ConfigError(f"{name} must be a path (got {value!r})")
        return value

    def _check_training_service(self, value: object, name: str) -> LocalConfig:
        if isinstance(value, LocalConfig):
            return value
        if isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: hybrid training services are not supported: {OWN_WORKERS}")
        if isinstance(value, dict):
            known = value
        elif hasattr(value, "platform"):  # another library's config object: its fields we know
            known = {n: getattr(value, n) for n in LocalConfig._names() if hasattr(value, n)}
        else:
            raise ConfigError(f"{name} must be a LocalConfig or a dict of its fields (got {value!r})")
        try:
            return LocalConfig(**known)
        except ConfigError as error:  # a non-local platform, say: refused, saying what to do
            raise ConfigError(f"{name}: {error}") from None

    def _check_execution_engine(self, value: object, name: str) -> str:
        engine = getattr(value, "name", value)  # NNI's engine config objects carry a name
        if isinstance(engine, str) and engine.lower() in _RUNS_PYTHON:
            return engine.lower()
        if isinstance(engine, str) and engine.lower() in _ENGINE_REFUSALS:
            raise ConfigError(f"{name} {engine!r} is not supported: {_ENGINE_REFUSALS[engine.lower()]}")
        raise ConfigError(
            f"{name} must be 'py' (or 'python', or 3.0's 'ts'): each trial runs the Python model on a "
            f"retia worker (got {value!r})"
        )

    def _check_model_format(self, value: object, name: str) -> str:
        fmt = getattr(value, "name", value)
        if isinstance(fmt, str) and fmt.lower() in _FORMATS:
            return fmt.lower()
        if fmt == "graph":
            raise ConfigError(
                f"{name} 'graph' is not supported: retia keeps no TorchScript graph of the model space "
                "(it travels pickled, as Python); use 'simplified'"
            )
        raise ConfigError(f"{name} must be 'simplified' or 'raw' (got {value!r})")

    # ---- what it asks of run() ----

    def run_arguments(
        self,
        *,
        max_trials: int | None = None,
        concurrency: int | None = None,
        max_duration: float | None = None,
        timeout: float | None = None,
        workers: int | None = None,
        trial_gpus: int | None = None,
        private_cluster: bool = True,
        debug: bool = False,
    ) -> RunArguments:
        """This config merged with run()'s own arguments; a value given both ways must agree."""
        duration = self.max_experiment_duration
        trial_duration = self.max_trial_duration
        max_trials = _agree("max_trials", max_trials, "max_trial_number", self.max_trial_number)
        concurrency = _agree("concurrency", concurrency, "trial_concurrency", self.trial_concurrency)
        max_duration = _agree(
            "max_duration",
            max_duration,
            "max_experiment_duration",
            None if duration is None else parse_duration(duration),
        )
        timeout = _agree(
            "timeout",
            timeout,
            "max_trial_duration",
            None if trial_duration is None else parse_duration(trial_duration),
        )
        service_gpus = self.training_service.trial_gpu_number
        configured = self.trial_gpu_number if self.trial_gpu_number is not None else service_gpus
        trial_gpus = _agree("trial_gpus", trial_gpus, "trial_gpu_number", configured)
        gpus = self._local_gpus(trial_gpus) if private_cluster else None
        if private_cluster and workers is None:
            if gpus:
                workers = len(gpus)
            elif self.trial_concurrency is not None and (gpus == [] or not detect_gpus()):
                workers = self.trial_concurrency  # NNI runs that many at once on a CPU machine
        level = self.log_level
        log_level = _LOG_LEVELS[level] if level else (logging.DEBUG if self.debug or debug else None)
        directory = self.experiment_working_directory
        return RunArguments(
            max_trials,
            concurrency,
            max_duration,
            timeout,
            workers,
            gpus,
            log_level,
            None if directory is None else Path(directory).expanduser(),
            self.experiment_name,
            trial_gpus,
        )

    def _local_gpus(self, per_trial: int | None) -> list[str] | None:
        """The GPUs of each private local worker: NNI's trial_gpu_number GPUs per trial."""
        service = self.training_service
        indices, per_gpu = service.gpu_indices, service.max_trial_number_per_gpu
        if not per_trial and per_gpu != 1:
            raise ConfigError(
                "training_service.max_trial_number_per_gpu does not work without trial_gpu_number"
            )
        if per_trial == 0:
            return []  # CPU workers: NNI's 0 GPUs per trial
        if per_trial is None and indices is None:
            return None  # local_cluster's default: one worker per visible GPU, else 2 CPU workers
        visible = detect_gpus()
        if indices is not None:
            missing = [i for i in indices if str(i) not in visible]
            if missing:
                raise ConfigError(
                    f"training_service.gpu_indices {indices}: GPU(s) {missing} are not visible here "
                    f"(visible: {visible or 'none'}; see nvidia-smi and CUDA_VISIBLE_DEVICES)"
                )
            visible = [str(i) for i in indices]
        per_trial = per_trial or 1
        if len(visible) < per_trial:
            raise ConfigError(
                f"trial_gpu_number is {per_trial} but this machine shows {len(visible)} GPU(s) "
                "(nvidia-smi, CUDA_VISIBLE_DEVICES); set trial_gpu_number = 0 to run on the CPU"
            )
        groups = [
            ",".join(visible[i : i + per_trial]) for i in range(0, len(visible) - per_trial + 1, per_trial)
        ]
        return [group for group in groups for _ in range(per_gpu)]


def _agree(arg: str, given: Any, field_name: str, configured: Any) -> Any:
    if given is not None and configured is not None and given != configured:
        raise ConfigError(
            f"run({arg}={given!r}) and config.{field_name} ({configured!r}) disagree: give one of them"
        )
    return given if given is not None else configured


class RetiariiExeConfig(ExperimentConfig):
    """NNI 2.x's name: ``RetiariiExeConfig('local', execution_engine='py', **fields)``."""

    def __init__(
        self, training_service_platform: str | None = None, execution_engine: Any = "py", **values: Any
    ) -> None:
        super().__init__(training_service_platform, execution_engine=execution_engine, **values)


class NasExperimentConfig(ExperimentConfig):
    """NNI 3.0's name, in its order: ``NasExperimentConfig('ts', 'simplified', 'local', **fields)``.

    A platform name as the first argument (``NasExperimentConfig('local')``) is taken as the platform:
    engine and platform names do not overlap."""

    def __init__(
        self,
        execution_engine: Any = None,
        model_format: Any = None,
        training_service_platform: str | None = None,
        **values: Any,
    ) -> None:
        if execution_engine in _PLATFORMS and training_service_platform is None:
            execution_engine, training_service_platform = None, execution_engine
        if execution_engine is not None:
            values["execution_engine"] = execution_engine
        if model_format is not None:
            values["model_format"] = model_format
        super().__init__(training_service_platform, **values)


def split_config_and_port(
    config_or_port: ExperimentConfig | int | None, port: int | None
) -> tuple[ExperimentConfig | None, int | None]:
    """NNI 2.x ``run(config, port)``, 3.0 ``run(port)`` / ``run(port=...)``: the config, a checked port."""
    config: ExperimentConfig | None = None
    if isinstance(config_or_port, ExperimentConfig):
        config = config_or_port
    elif config_or_port is not None:
        if isinstance(config_or_port, int) and not isinstance(config_or_port, bool) and config_or_port < 1024:
            raise ConfigError(
                f"run({config_or_port}, ...): run()'s first argument is an ExperimentConfig or the "
                "dashboard's port (1024-65535 as a first argument); for a trial budget write "
                f"run(max_trials={config_or_port}), and name run()'s other arguments too"
            )
        if port is not None:
            raise ConfigError(f"run() got two ports ({config_or_port!r} and port={port!r})")
        port = config_or_port
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        raise ConfigError(f"port must be an integer from 1 to 65535 (got {port!r})")
    return config, port


@contextlib.contextmanager
def logging_level(level: int | None) -> Iterator[None]:
    """The 'retia' loggers at ``level`` for the duration (NNI's debug / log_level), restored after."""
    if level is None:
        yield
        return
    logger = logging.getLogger("retia")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
