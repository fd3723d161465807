"""NNI 3.0's ``nni.nas.experiment``: ``NasExperiment(model_space, evaluator, strategy, config=None)``,
configured through ``exp.config`` and run with ``exp.run(port=...)``, and ``NasExperimentConfig``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retia.client.experiment import Experiment
from retia.client.experiment_config import ExperimentConfig, NasExperimentConfig
from retia.client.results import TrialResult
from retia.evaluator import Evaluator

__all__ = ["NasExperiment", "NasExperimentConfig"]


class NasExperiment(Experiment):
    """retia's ``Experiment`` in NNI 3.0's argument order (its fourth is the config, retia's the
    mutators); ``run`` takes NNI's ``wait_completion`` (retia's run always waits)."""

    def __init__(
        self,
        model_space: Any,
        evaluator: Evaluator,
        strategy: Any = None,
        config: ExperimentConfig | None = None,
        *,
        path: str | Path | None = None,
        direction: str | None = None,
    ) -> None:
        super().__init__(model_space, evaluator, strategy, path=path, direction=direction, config=config)

    def run(  # type: ignore[override]
        self,
        config: ExperimentConfig | int | None = None,
        port: int | None = None,
        wait_completion: bool = True,
        debug: bool = False,
        **retia_arguments: Any,
    ) -> list[TrialResult]:
        return super().run(config, port, debug=debug, **retia_arguments)
