"""A search space described choice by choice: kinds, options, priors and which choices a path reaches.

What ``space.search_space()`` gives is flat, ``{label: [options]}``. A :class:`SpaceDescription` is
that mapping too (so every caller of the flat form takes it as is), and it also knows, per choice,
its :class:`ChoiceKind`, its default, its prior, and its :class:`Requirement` s: a choice inside a
LayerChoice candidate is reached only when that candidate is chosen, one inside block ``k`` of a
Repeat only when the depth is above ``k``. Strategies use this to sample by the prior and to treat
architectures that differ only in labels their path does not reach as one (:meth:`representative`).

Plain JSON both ways (:meth:`SpaceDescription.to_json`, :meth:`~SpaceDescription.from_json`), and
NNI 2.x's search-space format (:func:`nni_search_space`). Imports no torch: strategies use it.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .arch import Arch, ChoiceSpec, canonical, option_index
from .errors import ConfigError

__all__ = [
    "ChoiceKind",
    "Requirement",
    "Choice",
    "SpaceDescription",
    "nni_search_space",
    "MAX_COUNTED",
]

_log = logging.getLogger(__name__)

#: The most combinations of gating choices enumerated to count a space's distinct architectures;
#: above it :meth:`SpaceDescription.count` is the plain product of the option counts.
MAX_COUNTED = 1_000_000


class ChoiceKind(str, enum.Enum):
    """What a decision chooses (the ``kind`` of its ChoiceSpec)."""

    LAYERCHOICE = "layerchoice"  # one candidate module: options are its indices (list) or names (dict)
    INPUTCHOICE = "inputchoice"  # inputs: an index (n_chosen=1) or a sorted list of n_chosen indices
    VALUECHOICE = "valuechoice"  # a plain value (also a Repeat's depth given as a ValueChoice)
    REPEAT = "repeat"  # a Repeat's depth given as a (min, max) range: the number of blocks


@dataclass(frozen=True)
class Requirement:
    """A choice is reached only when the choice ``label`` takes one of ``values``."""

    label: str
    values: tuple[Any, ...]

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "values": [canonical(v) for v in self.values]}


@dataclass(frozen=True)
class Choice:
    """One decision: its label, kind, options (JSON), default, prior (one weight per option, summing
    to 1; None: uniform) and the requirements that all hold on every path reaching it."""

    label: str
    kind: ChoiceKind
    options: tuple[Any, ...]
    default: Any
    prior: tuple[float, ...] | None = None
    requires: tuple[Requirement, ...] = ()

    @classmethod
    def from_spec(cls, spec: ChoiceSpec, requires: Sequence[Requirement] = ()) -> Choice:
        return cls(
            spec.label,
            _kind(spec.kind, spec.label),
            tuple(canonical(o) for o in spec.options),
            canonical(spec.default),
            spec.prior,
            tuple(requires),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "options": [canonical(o) for o in self.options],
            "default": canonical(self.default),
            "prior": None if self.prior is None else list(self.prior),
            "requires": [r.to_json() for r in self.requires],
        }


def _kind(kind: Any, label: str) -> ChoiceKind:
    try:
        return ChoiceKind(kind)
    except ValueError:
        known = [k.value for k in ChoiceKind]
        raise ConfigError(f"choice {label!r} has kind {kind!r}, not one of {known}") from None


@dataclass(frozen=True)
class SpaceDescription(Mapping[str, list[Any]]):
    """Every choice of a search space, in order; as a mapping, the flat ``{label: [options]}``."""

    choices: tuple[Choice, ...]
    _by_label: dict[str, Choice] = field(init=False, repr=False, compare=False)
    #: the space's own validity check beyond each label's options (``ModelSpace.arch_check``: raises
    #: InvalidArchitectureError), which samplers draw again on; not part of the JSON
    check: Callable[[Mapping[str, Any]], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_label: dict[str, Choice] = {}
        for choice in self.choices:
            if choice.label in by_label:
                raise ConfigError(f"search space describes label {choice.label!r} twice: one entry per label")
            if not choice.options:
                raise ConfigError(f"label {choice.label!r} has an empty option list")
            if option_index(choice.options, choice.default) is None:
                raise ConfigError(
                    f"label {choice.label!r}: default {choice.default!r} is not one of "
                    f"{list(choice.options)!r}"
                )
            if choice.prior is not None and len(choice.prior) != len(choice.options):
                raise ConfigError(
                    f"label {choice.label!r}: {len(choice.prior)} prior weights for "
                    f"{len(choice.options)} options; give one weight per option"
                )
            by_label[choice.label] = choice
        for choice in self.choices:
            for req in choice.requires:
                gate = by_label.get(req.label)
                if gate is None or req.label == choice.label:
                    raise ConfigError(
                        f"label {choice.label!r} requires {req.label!r}, which is not another "
                        "choice of the space"
                    )
                bad = [v for v in req.values if option_index(gate.options, v) is None]
                if bad:
                    raise ConfigError(
                        f"label {choice.label!r} requires {req.label!r} in {bad!r}, not among its options "
                        f"{list(gate.options)!r}"
                    )
        object.__setattr__(self, "_by_label", by_label)

    # ---- the flat mapping ----

    def __getitem__(self, label: str) -> list[Any]:
        return [canonical(o) for o in self._by_label[label].options]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_label)

    def __len__(self) -> int:
        return len(self._by_label)

    def choice(self, label: str) -> Choice:
        """The full entry of ``label`` (KeyError if the space has none)."""
        return self._by_label[label]

    # ---- JSON ----

    def to_json(self) -> dict[str, Any]:
        """``{label: {kind, options, default, prior, requires: [{label, values}]}}``, in order."""
        return {choice.label: choice.to_json() for choice in self.choices}

    @classmethod
    def from_json(
        cls, data: Any, check: Callable[[Mapping[str, Any]], None] | None = None
    ) -> SpaceDescription:
        """The description :meth:`to_json` wrote (with the space's ``check``, which JSON cannot hold);
        ConfigError naming what is wrong otherwise."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a space description is a dict {{label: entry}}, got {type(data).__name__}")
        choices = []
        for label, entry in data.items():
            if not isinstance(label, str) or not isinstance(entry, Mapping):
                raise ConfigError(f"space description entry {label!r} must be a dict under a string label")
            try:
                options = entry["options"]
                prior = entry.get("prior")
                requires = tuple(
                    Requirement(r["label"], tuple(r["values"])) for r in entry.get("requires", ())
                )
                choices.append(
                    Choice(
                        label,
                        _kind(entry["kind"], label),
                        tuple(options),
                        entry.get("default", options[0] if options else None),
                        None if prior is None else tuple(float(w) for w in prior),
                        requires,
                    )
                )
            except (KeyError, TypeError, IndexError) as exc:
                raise ConfigError(f"space description entry {label!r} is malformed: {exc!r}") from None
        return cls(tuple(choices), check=check)

    @classmethod
    def from_flat(cls, space: Mapping[str, Sequence[Any]]) -> SpaceDescription:
        """A flat ``{label: [options]}``: value choices, defaulting to their first option, uniform,
        every one always reached."""
        if isinstance(space, SpaceDescription):
            return space
        return cls(
            tuple(
                Choice(
                    label, ChoiceKind.VALUECHOICE, tuple(canonical(o) for o in options), canonical(options[0])
                )
                for label, options in space.items()
            )
        )

    def merged(self, other: Mapping[str, Sequence[Any]]) -> SpaceDescription:
        """This description and ``other``'s labels not in it (a label in both is one decision, this one's)."""
        extra = SpaceDescription.from_flat(other)
        return SpaceDescription(
            self.choices + tuple(c for c in extra.choices if c.label not in self),
            check=self.check or extra.check,
        )

    # ---- reachability ----

    def reaches(self, arch: Mapping[str, Any], label: str) -> bool:
        """Whether ``arch`` reaches choice ``label``: each of its requirements holds (a missing or
        invalid value of a gating label counts as holding; validation reports those)."""
        for req in self._by_label[label].requires:
            if req.label in arch and option_index(req.values, arch[req.label]) is None:
                gate = self._by_label[req.label]
                if option_index(gate.options, arch[req.label]) is not None:
                    return False
        return True

    def representative(self, arch: Mapping[str, Any]) -> Arch:
        """``arch`` with each label it does not reach at its default (those left out added), so
        architectures that are the same model compare equal."""
        out = {label: canonical(value) for label, value in arch.items()}
        for choice in self.choices:
            if not self.reaches(arch, choice.label):
                out[choice.label] = canonical(choice.default)
        return out

    def gates(self) -> list[str]:
        """The labels some other choice requires, in order."""
        required = {req.label for choice in self.choices for req in choice.requires}
        return [c.label for c in self.choices if c.label in required]

    def count(self) -> int:
        """The number of distinct architectures (labels a path does not reach not told apart); the
        plain product of option counts when the gating choices have over MAX_COUNTED combinations."""
        gates = self.gates()
        others = [c for c in self.choices if c.label not in gates]
        if not gates:
            return math.prod(len(c.options) for c in self.choices)
        combos = math.prod(len(self._by_label[g].options) for g in gates)
        if combos > MAX_COUNTED:
            _log.debug("%d combinations of gating choices: counting the plain product", combos)
            return math.prod(len(c.options) for c in self.choices)
        seen: set[tuple[int, ...]] = set()
        total = 0
        for combo in itertools.product(*(self._by_label[g].options for g in gates)):
            partial = self.representative(dict(zip(gates, combo)))
            key = tuple(option_index(self._by_label[g].options, partial[g]) or 0 for g in gates)
            if key in seen:
                continue
            seen.add(key)
            total += math.prod(len(c.options) for c in others if self.reaches(partial, c.label))
        return total

    def order(self) -> list[str]:
        """The labels with each one after the labels it requires (construction order otherwise):
        the order a define-by-run sampler asks them in."""
        placed: list[str] = []
        done: set[str] = set()
        visiting: set[str] = set()

        def place(label: str) -> None:
            if label in done or label in visiting:  # (a cycle cannot come from a space; ignore it)
                return
            visiting.add(label)
            for req in self._by_label[label].requires:
                place(req.label)
            visiting.discard(label)
            done.add(label)
            placed.append(label)

        for choice in self.choices:
            place(choice.label)
        return placed


def nni_search_space(space: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, Any]]:
    """NNI 2.x's search-space JSON, ``{label: {"_type": "choice", "_value": [options]}}``, which NNI's
    tuners read. Its ``choice`` has no weights nor requirements: a tuner sets every label, and the
    labels an architecture does not reach are ignored when it is built."""
    return {
        label: {"_type": "choice", "_value": [canonical(o) for o in options]}
        for label, options in space.items()
    }
