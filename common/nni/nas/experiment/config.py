"""NNI 3.0's ``nni.nas.experiment.config``: ``NasExperimentConfig``."""

from __future__ import annotations

from retia.client.experiment_config import NasExperimentConfig

__all__ = ["NasExperimentConfig"]
