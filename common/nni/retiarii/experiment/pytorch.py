"""NNI 2.x's ``nni.retiarii.experiment.pytorch``: ``RetiariiExperiment(base_model, evaluator,
mutators, strategy)`` and ``RetiariiExeConfig``, for ``exp.run(config, port)``."""

from __future__ import annotations

from retia.client.experiment import RetiariiExperiment
from retia.client.experiment_config import RetiariiExeConfig

__all__ = ["RetiariiExeConfig", "RetiariiExperiment"]
