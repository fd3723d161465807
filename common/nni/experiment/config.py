"""NNI's ``nni.experiment.config``: ``ExperimentConfig`` and the local training service's ``LocalConfig``."""

from __future__ import annotations

from retia.client.experiment_config import ExperimentConfig, LocalConfig

__all__ = ["ExperimentConfig", "LocalConfig"]
