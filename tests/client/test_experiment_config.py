"""NNI's experiment config objects (RetiariiExeConfig, NasExperimentConfig) driving real experiments."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

import pytest

from retia import (
    Experiment,
    FunctionalEvaluator,
    RetiariiExperiment,
    report_final_result,
    report_intermediate_result,
)
from retia.client.backend import Backend
from retia.client.experiment_config import (
    ExperimentConfig,
    LocalConfig,
    NasExperimentConfig,
    RetiariiExeConfig,
    logging_level,
    parse_duration,
)
from retia.errors import ConfigError
from retia.strategy import Random

from ..clusters import on_cluster
from ..common.spaces import DigitsMLPSpace
from ..integration import fits

pytestmark = pytest.mark.timeout(120)


def stamped(model_cls: Any, seconds: float = 0.3) -> None:
    """Reports when it started (an intermediate) and when it ended (the final), in the trial."""
    start = time.time()
    time.sleep(seconds)
    report_intermediate_result(start)
    report_final_result(time.time())


def _spans(results: list[Any]) -> list[tuple[float, float]]:
    return sorted((cast(float, r.intermediates[0]), cast(float, r.final)) for r in results)


def test_nni_2x_tutorial_config_runs_its_budget_and_keeps_the_port(cluster: Backend, tmp_path: Path) -> None:
    """NNI 2.x's hello_nas: RetiariiExeConfig('local'), fields set one by one, run(config, port)."""
    exp = RetiariiExperiment(
        DigitsMLPSpace(),
        FunctionalEvaluator(fits.arch_score, steps=2),
        [],
        Random(seed=5),
        path=tmp_path / "e",
    )
    exp_config = RetiariiExeConfig("local")
    exp_config.experiment_name = "mnist_search"
    exp_config.trial_concurrency = 2
    exp_config.max_trial_number = 3
    exp_config.trial_gpu_number = 0
    exp_config.training_service.use_active_gpu = False
    exp_config.execution_engine = "py"
    results = exp.run(exp_config, 8081, **on_cluster(cluster))
    assert [r.key for r in results] == [0, 1, 2] and {r.state for r in results} == {"SUCCEEDED"}
    assert exp.port == 8081 and exp.config is exp_config
    assert Experiment.load(tmp_path / "e").record.settings().max_trials == 3


def test_nni_3_exp_config_bounds_concurrency_when_run_gets_none(cluster: Backend, tmp_path: Path) -> None:
    """NNI 3.0's hello_nas: exp.config.max_trial_number = 3, trial_concurrency = 1, run(port=8081).
    With one trial at a time on two workers, each trial starts after the one before has ended."""
    exp = Experiment(DigitsMLPSpace(), FunctionalEvaluator(stamped), Random(seed=6), path=tmp_path / "e")
    exp.config.max_trial_number = 3
    exp.config.trial_concurrency = 1
    exp.config.trial_gpu_number = 0
    results = exp.run(port=8081, **on_cluster(cluster))
    assert len(results) == 3 and {r.state for r in results} == {"SUCCEEDED"}
    spans = _spans(results)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    assert exp.port == 8081


def test_nas_experiment_config_in_nnis_order_and_its_duration_stops_the_run(
    cluster: Backend, tmp_path: Path
) -> None:
    """NasExperimentConfig('ts', 'simplified', 'local'); max_experiment_duration as NNI writes it:
    once spent, nothing more is submitted and the trials in flight are cancelled, saying why."""
    for duration in ("2s", 2):
        config = NasExperimentConfig("ts", "simplified", "local", max_trial_number=10, trial_concurrency=2)
        config.max_experiment_duration = duration
        evaluator = FunctionalEvaluator(fits.arch_score, steps=40, delay=0.1)  # 4 s a trial
        exp = Experiment(DigitsMLPSpace(), evaluator, Random(seed=7), path=tmp_path / str(duration))
        results = exp.run(config, **on_cluster(cluster))
        assert len(results) == 2 and {r.state for r in results} == {"CANCELLED"}
        assert all("max_duration reached" in r.reason for r in results)


def test_a_private_cluster_from_the_config(tmp_path: Path) -> None:
    """No address: trial_gpu_number = 0 gives CPU workers, as many as trial_concurrency (NNI runs that
    many at once), and the experiment directory is made in experiment_working_directory."""
    config = ExperimentConfig("local", trial_gpu_number=0, trial_concurrency=3, max_trial_number=3)
    config.experiment_working_directory = tmp_path / "work"
    exp = Experiment(DigitsMLPSpace(), FunctionalEvaluator(fits.arch_score, steps=1), Random(seed=8))
    results = exp.run(config, live=False)
    assert len(results) == 3 and {r.state for r in results} == {"SUCCEEDED"}
    assert exp.path == tmp_path / "work" / exp.id and (exp.path / "experiment.json").is_file()
    assert sorted(p.name for p in (exp.path / "cluster").glob("worker-*")) == [
        "worker-0",
        "worker-1",
        "worker-2",
    ]
    given = Experiment(DigitsMLPSpace(), FunctionalEvaluator(fits.arch_score), Random(), path=tmp_path / "p")
    with pytest.raises(ConfigError, match="given path=.* and its config an experiment_working_directory"):
        given.run(config, live=False)


def test_unknown_and_unsupported_fields_are_refused_naming_them() -> None:
    config = RetiariiExeConfig("local")
    with pytest.raises(ConfigError, match="has no field 'max_trail_number': did you mean 'max_trial_number'"):
        config.max_trail_number = 3  # _Checked.__getattr__: mypy lets it through
    with pytest.raises(AttributeError, match="did you mean 'trial_concurrency'"):
        _ = config.trial_concurency  # _Checked.__getattr__: mypy lets it through
    with pytest.raises(ConfigError, match="LocalConfig has no field 'use_active_gpus'"):
        config.training_service.use_active_gpus = True  # _Checked.__getattr__: mypy lets it through
    with pytest.raises(ConfigError, match="has no field 'trial_concurency'"):
        ExperimentConfig("local", trial_concurency=2)
    refusals: dict[str, list[tuple[Any, str]]] = {
        "execution_engine": [("base", "no graph engine"), ("oneshot", "one-shot"), ("cgo", r"pack=K")],
        "model_format": [("graph", "TorchScript")],
        "experiment_type": [("hpo", "NAS experiments")],
        "search_space": [({"lr": [0.1]}, "model space's choices")],
        "search_space_file": [("space.json", "model space's choices")],
        "trial_command": [("python train.py", "no trial command")],
        "trial_code_directory": [("/elsewhere", "importable")],
        "use_annotation": [(True, "annotations")],
        "tuner": [({"name": "TPE"}, "pass a strategy")],
        "assessor": [({"name": "Medianstop"}, "early_stop")],
        "tuner_gpu_indices": [(0, "no tuner process")],
        "shared_storage": [({"storageType": "NFS"}, "no shared storage")],
        "trial_concurrency": [(0, ">= 1"), (True, ">= 1")],
        "max_trial_number": [(0, ">= 1"), (2.5, ">= 1")],
        "trial_gpu_number": [(-1, ">= 0")],
        "max_experiment_duration": [("1x", "not a duration"), (0, "positive"), ("-1h", "not a duration")],
        "log_level": [("loud", "one of fatal")],
        "training_service": [([LocalConfig()], "hybrid"), ({"platform": "remote"}, "own workers")],
    }
    for name, cases in refusals.items():
        for value, why in cases:
            with pytest.raises(ConfigError, match=f"{name}.*{why}"):
                setattr(config, name, value)
    for platform in ("remote", "openpai", "kubeflow", "aml"):
        with pytest.raises(ConfigError, match="retia worker --credential.*address="):
            config.training_service.platform = platform
        with pytest.raises(ConfigError, match=f"platform '{platform}' is not supported"):
            RetiariiExeConfig(platform)
    assert config.training_service.platform == "local"  # nothing refused was kept


def test_nnis_spellings_and_values_are_accepted() -> None:
    two = RetiariiExeConfig("local", execution_engine="py")
    three = NasExperimentConfig("ts", "simplified", "local")
    assert isinstance(two, ExperimentConfig) and isinstance(three, ExperimentConfig)
    assert (two.execution_engine, three.execution_engine, three.model_format) == ("py", "ts", "simplified")
    assert NasExperimentConfig("local").training_service.platform == "local"  # engine names are not platforms
    assert ExperimentConfig(trialConcurrency=2, maxTrialNumber=5).trial_concurrency == 2  # NNI's JSON keys
    three.execution_engine = "python"
    three.model_format = "raw"
    from_dict = ExperimentConfig(training_service={"platform": "local", "use_active_gpu": True})  # NNI's dict
    assert isinstance(from_dict.training_service, LocalConfig) and from_dict.training_service.use_active_gpu
    three.nni_manager_ip, three.trial_code_directory = "10.0.0.1", "."
    assert [parse_duration(v) for v in ("1h", "30m", "10s", "2d", "1.5h", 90, 0.5)] == [
        3600,
        1800,
        10,
        172800,
        5400,
        90,
        0.5,
    ]


def test_config_fields_map_onto_run_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ExperimentConfig("local", max_trial_number=4, trial_concurrency=2)
    config.max_experiment_duration, config.max_trial_duration = "1m", "10s"
    args = config.run_arguments(private_cluster=False)
    assert (args.max_trials, args.concurrency, args.max_duration, args.timeout) == (4, 2, 60, 10)
    assert args.gpus is None and args.workers is None and args.log_level is None
    assert config.run_arguments(max_trials=4, private_cluster=False).max_trials == 4  # agreeing is fine
    with pytest.raises(ConfigError, match=r"run\(max_trials=5\) and config.max_trial_number \(4\) disagree"):
        config.run_arguments(max_trials=5)
    config.debug = True
    assert config.run_arguments(private_cluster=False).log_level == logging.DEBUG
    config.log_level = "warning"
    assert config.run_arguments(private_cluster=False).log_level == logging.WARNING
    retia_logger = logging.getLogger("retia")
    before = retia_logger.level
    with logging_level(logging.DEBUG):
        assert retia_logger.level == logging.DEBUG
    assert retia_logger.level == before

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # what detect_gpus reads first
    gpus = ExperimentConfig("local", trial_gpu_number=2)
    assert gpus.run_arguments().gpus == ["0,1", "2,3"] and gpus.run_arguments().workers == 2
    gpus.training_service.max_trial_number_per_gpu = 2
    assert gpus.run_arguments().gpus == ["0,1", "0,1", "2,3", "2,3"]
    assert gpus.run_arguments(private_cluster=False).gpus is None  # remote workers own their GPUs
    gpus.trial_gpu_number = None  # then the training service's own (NNI's shortcut field) counts
    gpus.training_service = LocalConfig(gpu_indices="1,3", trial_gpu_number=1)
    assert gpus.run_arguments().gpus == ["1", "3"]
    gpus.training_service.gpu_indices = [5]
    with pytest.raises(ConfigError, match=r"GPU\(s\) \[5\] are not visible"):
        gpus.run_arguments()
    with pytest.raises(ConfigError, match="trial_gpu_number is 8 but this machine shows 4 GPU"):
        ExperimentConfig("local", trial_gpu_number=8).run_arguments()
    with pytest.raises(ConfigError, match="max_trial_number_per_gpu does not work without trial_gpu_number"):
        ExperimentConfig("local", training_service=LocalConfig(max_trial_number_per_gpu=2)).run_arguments()
    assert ExperimentConfig("local", trial_gpu_number=0, trial_concurrency=3).run_arguments().workers == 3


def test_port_is_validated_before_anything_starts(tmp_path: Path) -> None:
    exp = Experiment(DigitsMLPSpace(), FunctionalEvaluator(fits.arch_score), Random(), path=tmp_path / "e")
    for bad in (0, 70000, -1, "8081", True, 80.5):
        with pytest.raises(ConfigError, match="port must be an integer from 1 to 65535"):
            exp.run(RetiariiExeConfig("local"), bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"for a trial budget write run\(max_trials=5\)"):
        exp.run(5)  # retia's positional max_trials, before NNI's config and port took those places
    with pytest.raises(ConfigError, match="two ports"):
        exp.run(8081, 8082)
    assert exp.port is None and not (tmp_path / "e").exists()  # nothing was started or written
