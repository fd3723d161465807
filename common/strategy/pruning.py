"""Early stopping with any Optuna pruner, behind the EarlyStop protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["OptunaPruner"]


class OptunaPruner:
    """Adapts an ``optuna.pruners.BasePruner`` (MedianPruner, HyperbandPruner, ...) to EarlyStop.

    Curves are mirrored into a private maximize study: completed curves become COMPLETE
    trials (final value = last intermediate), running ones RUNNING trials; step = report index.
    """

    def __init__(self, pruner: Any) -> None:
        self.pruner = pruner
        self._study: Any = None
        self._running: dict[int, Any] = {}
        self._reported: dict[int, int] = {}
        self._done: set[int] = set()

    def _ensure_study(self) -> Any:
        if self._study is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._study = optuna.create_study(direction="maximize", pruner=self.pruner)
        return self._study

    def _sync(self, key: int, curve: Sequence[float]) -> Any:
        trial = self._running.get(key)
        if trial is None:
            trial = self._running[key] = self._ensure_study().ask()
        for step in range(self._reported.get(key, 0), len(curve)):
            trial.report(float(curve[step]), step)
        self._reported[key] = len(curve)
        return trial

    def should_stop(
        self, key: int, history: Mapping[int, Sequence[float]], completed: Mapping[int, Sequence[float]]
    ) -> bool:
        import optuna

        study = self._ensure_study()
        for k, curve in completed.items():
            if k in self._done or not curve:
                continue
            self._done.add(k)
            if k in self._running:
                study.tell(self._sync(k, curve), float(curve[-1]))
                del self._running[k]
            else:
                study.add_trial(
                    optuna.trial.create_trial(
                        value=float(curve[-1]), intermediate_values={i: float(v) for i, v in enumerate(curve)}
                    )
                )
        curve = history.get(key, ())
        if not curve or key in self._done:
            return False
        return bool(self._sync(key, curve).should_prune())
