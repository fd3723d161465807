"""The ask/tell strategy interface, the search-space codec, and median early stopping.

Data flow, as the Experiment loop drives a strategy::

    attach(space) -> ask(key) -> arch --run--> report(key, step, v)* -> tell(key, arch, value)
                                        <--- to_stop(running) cancels trials doing badly

Every value is maximized (the loop negates for minimize); ``value=None`` means failed.
"""

from __future__ import annotations

import abc
import logging
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..arch import Arch, SearchSpace, arch_indices, canonical, option_index, valid_draw
from ..errors import ConfigError, InvalidArchitectureError
from ..searchspace import SpaceDescription

__all__ = ["EarlyStop", "MedianStop", "SpaceCodec", "Strategy"]

_log = logging.getLogger(__name__)

Index = tuple[int, ...]


class SpaceCodec:
    """Validated search space; maps an arch to its tuple of option indices and back.

    Given a :class:`~retia.searchspace.SpaceDescription` (a flat space is one whose choices are
    always reached, uniform), indices are kept *canonical*: a label the path does not reach is at
    its default, so two archs that differ only there are one index; ``size`` counts distinct ones.
    """

    def __init__(self, space: SearchSpace | SpaceDescription) -> None:
        if not isinstance(space, Mapping):
            raise ConfigError(
                f"search space must be a dict {{label: [options...]}}, got {type(space).__name__}"
            )
        if not space:
            raise ConfigError("search space is empty: it needs at least one label")
        self.labels: list[str] = []
        self.options: list[list[Any]] = []
        for label, options in space.items():
            if not isinstance(label, str):
                raise ConfigError(f"search space label {label!r} is not a string")
            if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
                raise ConfigError(f"options of label {label!r} must be a list, got {type(options).__name__}")
            if len(options) == 0:
                raise ConfigError(f"label {label!r} has an empty option list")
            self.labels.append(label)
            self.options.append([canonical(o) for o in options])
        self.space = dict(zip(self.labels, self.options))
        self.description = SpaceDescription.from_flat(space)
        self.check = self.description.check
        choices = [self.description.choice(label) for label in self.labels]
        self.priors: list[list[float] | None] = [None if c.prior is None else list(c.prior) for c in choices]
        self.defaults: list[int] = [option_index(c.options, c.default) or 0 for c in choices]
        position = {label: i for i, label in enumerate(self.labels)}
        self.requires: list[list[tuple[int, frozenset[int]]]] = [
            [
                (
                    position[r.label],
                    frozenset(
                        i
                        for i, o in enumerate(self.options[position[r.label]])
                        if option_index(r.values, o) is not None
                    ),
                )
                for r in c.requires
            ]
            for c in choices
        ]
        self.product = 1  # architectures as label/option combinations, unreached labels told apart
        for opts in self.options:
            self.product *= len(opts)
        self.size = self.description.count()
        self.order: list[int] = [position[label] for label in self.description.order() if label in position]

    def reached(self, index: Index, position: int) -> bool:
        """Whether the arch ``index`` reaches label ``self.labels[position]``."""
        return all(index[gate] in allowed for gate, allowed in self.requires[position])

    def canonical(self, index: Index) -> Index:
        """``index`` with each label it does not reach at its default (one index per distinct model)."""
        return tuple(i if self.reached(index, p) else self.defaults[p] for p, i in enumerate(index))

    def sample_option(self, position: int, rng: random.Random, exclude: int | None = None) -> int:
        """An option index of label ``position`` drawn by its prior (uniform without), not ``exclude``."""
        candidates = [i for i in range(len(self.options[position])) if i != exclude]
        prior = self.priors[position]
        if prior is None or sum(prior[i] for i in candidates) <= 0:
            return rng.choice(candidates)
        return rng.choices(candidates, weights=[prior[i] for i in candidates])[0]

    def valid(self, index: Index) -> bool:
        """Whether the space's own check (:attr:`SpaceDescription.check`; none: any) accepts ``index``."""
        if self.check is None:
            return True
        try:
            self.check(self.decode(index))
        except InvalidArchitectureError as exc:
            _log.debug("the space refuses %s: %s", index, exc)
            return False
        return True

    def sample(self, rng: random.Random) -> Index:
        """A canonical index drawn label by label, each by its prior; drawn again while the space's own
        check refuses it (InvalidArchitectureError after MAX_VALID_DRAWS draws)."""

        def draw() -> Index:
            return self.canonical(tuple(self.sample_option(p, rng) for p in range(len(self.labels))))

        check = self.check
        if check is None:
            return draw()
        return valid_draw(draw, lambda index: check(self.decode(index)))

    def encode(self, arch: Mapping[str, Any]) -> Index:
        """Canonical option indices of ``arch`` (labels it does not reach may be left out);
        InvalidArchitectureError naming every bad label (as retia.nn does)."""
        filled = dict(arch)
        for label in self.labels:
            if label not in filled and not self.description.reaches(arch, label):
                filled[label] = self.description.choice(label).default
        indices = arch_indices(self.space, filled)
        return self.canonical(tuple(indices[label] for label in self.labels))

    def decode(self, index: Index) -> Arch:
        """The architecture dict of a tuple of option indices (fresh lists, never the codec's own)."""
        return {label: canonical(opts[i]) for label, opts, i in zip(self.labels, self.options, index)}

    def rank(self, index: Index) -> int:
        """Position of ``index`` in grid order (last label varies fastest)."""
        r = 0
        for i, opts in zip(index, self.options):
            r = r * len(opts) + i
        return r

    def unrank(self, r: int) -> Index:
        """Inverse of ``rank``."""
        out = []
        for opts in reversed(self.options):
            r, i = divmod(r, len(opts))
            out.append(i)
        return tuple(reversed(out))


@runtime_checkable
class EarlyStop(Protocol):
    """Decides whether running trial ``key`` should be cancelled, from its and finished curves."""

    def should_stop(
        self, key: int, history: Mapping[int, Sequence[float]], completed: Mapping[int, Sequence[float]]
    ) -> bool: ...


@dataclass
class MedianStop:
    """Stop a trial whose best value so far is below the median of completed trials' best at that step.

    As Optuna's MedianPruner / NNI's Medianstop: the first ``warmup_steps`` reports are never
    judged, and nothing is stopped before ``min_trials`` completed trials reached that step.
    """

    warmup_steps: int = 1
    min_trials: int = 3

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.min_trials < 1:
            raise ConfigError("MedianStop needs warmup_steps >= 0 and min_trials >= 1")

    def should_stop(
        self, key: int, history: Mapping[int, Sequence[float]], completed: Mapping[int, Sequence[float]]
    ) -> bool:
        curve = history.get(key, ())
        n = len(curve)
        if n <= self.warmup_steps:
            return False
        others = [max(c[:n]) for k, c in completed.items() if k != key and len(c) >= n]
        if len(others) < self.min_trials:
            return False
        return max(curve) < statistics.median(others)


@dataclass
class _Book:
    """What a strategy has observed: intermediate curves, final values, archs seen."""

    steps: dict[int, dict[int, float]] = field(default_factory=dict)
    finals: dict[int, float | None] = field(default_factory=dict)
    seen: set[Index] = field(default_factory=set)
    stopped: set[int] = field(default_factory=set)

    def curve(self, key: int) -> list[float]:
        return [v for _, v in sorted(self.steps.get(key, {}).items())]


class Strategy(abc.ABC):
    """A pure ask/tell search algorithm over architecture dicts; always maximizes."""

    #: A one-shot strategy (retia.oneshot): its one trial trains the supernet, not a sampled model.
    trains_supernet: ClassVar[bool] = False

    def __init__(self, *, seed: int | None = None, early_stop: EarlyStop | None = None) -> None:
        self.seed = seed
        self.early_stop = early_stop
        self._codec: SpaceCodec | None = None
        self._book = _Book()

    @property
    def codec(self) -> SpaceCodec:
        if self._codec is None:
            raise RuntimeError(f"{type(self).__name__}.attach(search_space) must be called before use")
        return self._codec

    def attach(self, search_space: SearchSpace | SpaceDescription) -> None:
        """Validate and remember the search space (flat, or a description with priors and
        requirements); called once before any ask."""
        self._codec = SpaceCodec(search_space)
        _log.debug("%s attached to a space of %d architectures", type(self).__name__, self._codec.size)

    @abc.abstractmethod
    def ask(self, key: int) -> Arch | None:
        """Next architecture for trial ``key``; None when the strategy is exhausted."""

    def tell(self, key: int, arch: Arch, value: float | None) -> None:
        """Record trial ``key``'s final value (None: failed); works for keys never asked (replay)."""
        index = self.codec.encode(arch)
        if value is not None:
            value = float(value)
        self._book.seen.add(index)
        self._book.finals[key] = value
        self._observe(key, index, value)

    def _observe(self, key: int, index: Index, value: float | None) -> None:  # noqa: B027 (optional hook)
        """Hook for subclasses: a validated final observation (Random and GridSearch need none)."""

    def report(self, key: int, step: int, value: float) -> None:
        """Record an intermediate value of trial ``key`` at ``step`` (maximize)."""
        self._book.steps.setdefault(key, {})[int(step)] = float(value)

    def to_stop(self, running: Iterable[int]) -> list[int]:
        """Running trials the early-stop rule says to cancel now (each named once)."""
        if self.early_stop is None:
            return []
        book = self._book
        history = {k: book.curve(k) for k in book.steps}
        completed = {k: history.get(k, []) for k, v in book.finals.items() if v is not None and k in history}
        out = []
        for key in running:
            if key in book.stopped or key in book.finals or key not in history:
                continue
            if self.early_stop.should_stop(key, history, completed):
                book.stopped.add(key)
                out.append(key)
        if out:
            _log.debug("early stop: %s", out)
        return out

    @property
    def exhausted(self) -> bool:
        """True once every architecture of the space has been proposed or observed."""
        return self._codec is not None and len(self._book.seen) >= self._codec.size

    def _issue(self, index: Index) -> Arch:
        """Mark ``index`` (canonical) as seen and return its arch dict."""
        index = self.codec.canonical(index)
        self._book.seen.add(index)
        return self.codec.decode(index)
