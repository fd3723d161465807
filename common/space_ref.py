"""A model space plus an architecture, as a small picklable factory for the concrete model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["FrozenModel"]


class FrozenModel:
    """Builds ``space(*args, **kwargs)`` under ``fixed_arch(arch)``: the concrete model, on the worker."""

    def __init__(
        self,
        space: Callable[..., Any],
        arch: dict[str, Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.space = space
        self.arch = arch
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    def __call__(self) -> Any:
        from retia.nn.space import build_frozen

        return build_frozen(self.space, self.arch, self.args, self.kwargs)

    def __repr__(self) -> str:
        return f"FrozenModel({getattr(self.space, '__qualname__', self.space)}, {self.arch})"
