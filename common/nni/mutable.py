"""NNI 3.0's ``nni.mutable``: ``label_scope``, and ``Categorical``, what a space's ``simplify()``
describes each of its decisions with.

A choice in a retia model is built with ``nni.choice(label, values)`` (a :class:`retia.nn.ValueChoice`),
a LayerChoice or an InputChoice; a :class:`Categorical` describes one decision of a built space
(its label and values), for strategies written against NNI 3.0's ``simplify()``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from retia.arch import MISSING, ChoiceSpec, canonical, match_option
from retia.errors import InvalidArchitectureError
from retia.nn.registry import label_scope

__all__ = ["Categorical", "label_scope"]


class Categorical:
    """One decision of a model space: choose one of ``values`` under ``label`` (NNI 3.0's Categorical).

    ``weights`` is the prior of each value (uniform when not given; a choice's ``prior``).
    ``default()`` is the value the supernet is built with (retia builds a numeric ValueChoice at
    its largest option, NNI at its first). The values of an InputChoice choosing several inputs
    are the index lists it can choose (NNI has a CategoricalMultiple over the indices for it).
    """

    def __init__(
        self,
        values: Sequence[Any],
        *,
        label: str,
        weights: Sequence[float] | None = None,
        default: Any = MISSING,
    ) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"Categorical needs a non-empty list of values, got {values!r}")
        if not isinstance(label, str) or not label:
            raise ValueError(f"Categorical needs a label, a non-empty string, got {label!r}")
        self.label = label
        self.values = [canonical(v) for v in values]
        if weights is None:
            self.weights = [1 / len(self.values)] * len(self.values)
        elif len(weights) != len(self.values) or any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(
                f"weights of {label!r} must be {len(self.values)} non-negative numbers with a positive "
                f"sum, one per value, got {list(weights)!r}"
            )
        else:
            self.weights = [w / sum(weights) for w in weights]
        if default is not MISSING and match_option(self.values, default) is MISSING:
            raise ValueError(f"default {default!r} of {label!r} is not one of {self.values!r}")
        self.default_value = self.values[0] if default is MISSING else canonical(default)

    @classmethod
    def from_spec(cls, spec: ChoiceSpec) -> Categorical:
        """The description of a space's decision ``spec``."""
        return cls(spec.options, label=spec.label, weights=spec.prior, default=spec.default)

    def default(self) -> Any:
        return self.default_value

    def random(self, random_state: random.Random | None = None) -> Any:
        """One value drawn by ``weights`` (with ``random_state``, reproducibly)."""
        return (random_state or random.Random()).choices(self.values, weights=self.weights)[0]

    def grid(self) -> Iterator[Any]:
        """Every value, in order."""
        return iter(list(self.values))

    def contains(self, sample: Mapping[str, Any]) -> bool:
        return self.label in sample and match_option(self.values, sample[self.label]) is not MISSING

    def freeze(self, sample: Mapping[str, Any]) -> Any:
        """The value ``sample`` gives this label (InvalidArchitectureError if missing or not a value)."""
        if self.label not in sample:
            raise InvalidArchitectureError(f"missing label {self.label!r} (options: {self.values!r})")
        value = match_option(self.values, sample[self.label])
        if value is MISSING:
            raise InvalidArchitectureError(
                f"label {self.label!r} has value {sample[self.label]!r}, not one of {self.values!r}"
            )
        return value

    def simplify(self) -> dict[str, Categorical]:
        return {self.label: self}

    def as_legacy_dict(self) -> dict[str, Any]:
        """NNI's search-space JSON entry: ``{'_type': 'choice', '_value': values}``."""
        return {"_type": "choice", "_value": list(self.values)}

    def __len__(self) -> int:
        return len(self.values)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Categorical)
            and self.label == other.label
            and len(self.values) == len(other.values)
            and all(match_option([a], b) is not MISSING for a, b in zip(self.values, other.values))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Categorical({self.values!r}, label={self.label!r})"
