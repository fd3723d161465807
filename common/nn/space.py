"""ModelSpace and original_state_dict_hooks: what strategies sample and workers rebuild.

A ``ModelSpace`` subclass declares its choices in ``__init__``. ``__new__`` records the
constructor arguments as a :class:`~retia.trace.Recipe`, so ``retia.dump(space)`` ships
the space (by reference when importable, by value from ``__main__``) and
``space.freeze(arch)`` rebuilds it anywhere under ``fixed_arch(arch)``, with
:func:`retia.arch.build_frozen`::

    space = MySpace(...)                 # supernet: every candidate present, weights shared
    arch = space.random_sample(seed=0)   # {label: choice}, plain JSON
    model = space.freeze(arch)           # == `with fixed_arch(arch): MySpace(...)`
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..arch import (
    MISSING,
    Arch,
    ArchLike,
    ChoiceSpec,
    build_frozen,
    canonical,
    coerce_choice,
    current_fixed_arch,
    load_arch,
    match_option,
    normalize_arch,
    note_space_built,
    valid_draw,
    validate_arch,
)
from ..trace import Recipe, _attach, _name_positionals
from .choices import CHOSEN_ATTR, InputChoice, LayerChoice
from .mixed import activate_mixed, choice_labels, install_mixed, slices_of, take
from .registry import LabelStyle, begin_space
from .repeat import UNBUILT_ATTR, Repeat

__all__ = [
    "ArchHooks",
    "ModelSpace",
    "UNUSED_ATTR",
    "locate_choices",
    "model_wrapper",
    "original_state_dict_hooks",
    "wrap_model_class",
]

_log = logging.getLogger(__name__)

# On a frozen module: names of children its supernet holds that the frozen model leaves out, as no
# path of the architecture reads them (their supernet keys are dropped, as an unchosen candidate's).
UNUSED_ATTR = "_retia_unused_children"


class ArchHooks:
    """A module whose choices are checked or activated as a whole (NasBench101Cell's graph):
    :meth:`ModelSpace.validate` calls ``check_arch``, :meth:`ModelSpace.activate` calls ``activate_arch``
    and leaves the ``activated_labels`` (its ValueChoices) to it."""

    activated_labels: frozenset[str] = frozenset()
    #: labels an exported architecture may hold that are no choice but a record derived from the
    #: choices (NNI 3.0's ``<cell>/final``): not searched; ``check_arch`` checks them, then they are dropped
    derived_labels: frozenset[str] = frozenset()

    def check_arch(self, arch: Mapping[str, Any]) -> None:
        """Raise InvalidArchitectureError if ``arch`` (valid label by label) is not valid as a whole."""

    def activate_arch(self, arch: Mapping[str, Any]) -> None:
        """Make forward use ``arch`` (already validated)."""


@dataclass
class _SpaceInfo:
    """How a space instance was built, and the choices registered while it was."""

    space_cls: type
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    specs: dict[str, ChoiceSpec]
    frozen_arch: Arch | None


class ModelSpace(nn.Module):
    """Base class of model spaces: declare LayerChoice / InputChoice / ValueChoice in ``__init__``.

    Built normally it is the supernet; built under :func:`fixed_arch` (or by :meth:`freeze`)
    it is the chosen concrete model, with no parameters of unchosen candidates.
    """

    _retia_space: _SpaceInfo  # set in __new__, in the instance __dict__ (not a module attribute)
    # How choices without a label are named (the retia.nni adapters set NNI's styles).
    _retia_label_style: ClassVar[LabelStyle] = LabelStyle.RETIA

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        self = super().__new__(cls)
        args, kwargs = _name_positionals(cls, args, kwargs)
        fixed = current_fixed_arch()
        specs, top_level = begin_space(self)
        note_space_built(functools.partial(_locate_in_supernet, cls, args, kwargs) if top_level else None)
        frozen = None if fixed is None else dict(fixed)
        self.__dict__["_retia_space"] = _SpaceInfo(cls, args, kwargs, specs, frozen)
        if frozen is None:
            _attach(self, Recipe(cls, args, kwargs))
        else:
            _attach(
                self, Recipe(build_frozen, (), {"space": cls, "arch": frozen, "args": args, "kwargs": kwargs})
            )
        return self

    @property
    def frozen_arch(self) -> Arch | None:
        """The architecture this model was built with under ``fixed_arch``; None for a supernet."""
        frozen = self._retia_space.frozen_arch
        return None if frozen is None else dict(frozen)

    def search_space(self) -> dict[str, list[Any]]:
        """``{label: [options]}`` for every choice, in construction order."""
        return {
            label: [canonical(o) for o in spec.options] for label, spec in self._retia_space.specs.items()
        }

    def describe(self) -> dict[str, Any]:
        """Every choice as plain JSON, ``{label: {kind, options, default, prior, requires}}``: what
        :func:`retia.nn.describe.describe_space` gives (``requires``: the other choices' values on
        which this one is reached, e.g. a LayerChoice's candidate or a Repeat's depths above a block)."""
        from .describe import describe_space

        return describe_space(self).to_json()

    def simplify(self) -> dict[str, ChoiceSpec]:
        """``{label: ChoiceSpec}``: every decision of the space once (a shared label once), with its
        kind, options and supernet default, in construction order (NNI 3.0's ``simplify()``)."""
        return dict(self._retia_space.specs)

    def random_sample(self, seed: int | None = None) -> Arch:
        """One valid architecture drawn uniformly (reproducible for a given ``seed``): a draw that a
        module checking the architecture as a whole refuses (:meth:`arch_check`) is drawn again, up
        to MAX_VALID_DRAWS times, then InvalidArchitectureError."""
        rng = random.Random(seed)
        space = self.search_space()
        check = self.arch_check()
        return valid_draw(lambda: {label: canonical(rng.choice(o)) for label, o in space.items()}, check)

    def arch_check(self) -> Callable[[Mapping[str, Any]], None] | None:
        """The space's own validity check beyond each label's options, for strategies to draw only valid
        architectures: InvalidArchitectureError for an architecture (its labels of this space) that a
        module checking it as a whole (an :class:`ArchHooks`, as NasBench101Cell) refuses; None when
        every combination of options is valid."""
        if not any(isinstance(m, ArchHooks) for m in self.modules()):
            return None
        labels = self._retia_space.specs

        def check(arch: Mapping[str, Any]) -> None:
            self.validate({label: value for label, value in arch.items() if label in labels})

        return check

    def grid(self) -> Iterator[Arch]:
        """Every architecture, in a stable order (the last label varies fastest)."""
        space = self.search_space()
        for combo in itertools.product(*space.values()):
            yield {label: canonical(value) for label, value in zip(space, combo)}

    def size(self) -> int:
        """The number of architectures: the product of the option counts."""
        return math.prod(len(options) for options in self.search_space().values())

    def validate(self, arch: ArchLike) -> Arch:
        """``arch`` as a plain dict of canonical options; InvalidArchitectureError if it does not fit.

        NNI's forms of a value are accepted (``'1'`` for a list LayerChoice), and the records NNI
        derives from the choices (``derived_labels``: a NasBench101Cell's ``<label>/final``) are checked
        against them and left out of the result. A label of a choice
        that ``arch`` does not reach (inside a LayerChoice candidate it does not choose) may be
        left out: it is filled with the supernet's default, which the model does not use.
        """
        specs = self._retia_space.specs
        loaded = normalize_arch(specs, load_arch(arch))
        hooked = [m for m in self.modules() if isinstance(m, ArchHooks)]
        derived = {label: loaded.pop(label) for m in hooked for label in m.derived_labels if label in loaded}
        missing = [label for label in specs if label not in loaded]
        if missing:
            located, reached = locate_choices(self, loaded)
            for label in missing:
                if label in located and label not in reached:
                    loaded[label] = canonical(specs[label].default)
        validate_arch(self.search_space(), loaded)
        for module in hooked:
            module.check_arch({**loaded, **derived})
        return loaded

    def freeze(self, arch: ArchLike, *, inherit_weights: bool = False) -> nn.Module:
        """The concrete model ``arch``: this space's class rebuilt with its arguments under ``fixed_arch``
        (with the labels ``arch`` does not reach at their defaults, see :meth:`validate`).

        The model has fresh weights; with ``inherit_weights=True`` it takes this supernet's (its
        chosen candidates', as slices where a width or a kernel is chosen smaller), as NNI 3.0's
        ``freeze`` does and the second stage of SPOS needs.
        """
        info = self._retia_space
        model: nn.Module = build_frozen(info.space_cls, self.validate(arch), info.args, info.kwargs)
        if inherit_weights:
            with original_state_dict_hooks(model):
                model.load_state_dict(self.state_dict())
        return model

    def activate(self, arch: ArchLike) -> None:
        """Select the single path of the supernet that the next forward passes use (as SPOS trains).

        A choice among a layer's arguments (a width, a kernel size) runs as a slice of the layer's
        largest weight (see :mod:`retia.nn.mixed`); one used up while the space was built (a
        Python computation, a layer that is not mixed) only runs its supernet value, and another
        value of it is refused with NotImplementedError naming where it is kept.
        """
        info = self._retia_space
        if info.frozen_arch is not None:
            raise RuntimeError(
                f"activate() selects a path in a supernet, but this {type(self).__name__} was built "
                "under fixed_arch; use space.freeze(arch) to build another architecture"
            )
        loaded = self.validate(arch)
        report = install_mixed(self)
        # a Repeat runs any depth, a LayerChoice / InputChoice any candidate, a hooked module its own
        hooked = [m for m in self.modules() if isinstance(m, ArchHooks)]
        selectors = {m.label for m in self.modules() if isinstance(m, (LayerChoice, InputChoice, Repeat))}
        selectors.update(label for m in hooked for label in m.activated_labels)
        for label, spec in info.specs.items():
            if spec.kind != "valuechoice" or label in selectors:
                continue
            if match_option([spec.default], loaded[label]) is not MISSING:
                continue  # the supernet's own value runs everywhere
            if label not in report.mixed_labels or label in report.fixed_uses:
                where = report.fixed_uses.get(label)
                kept = f"it is kept in {where}, " if where else "it was used up while the space was built, "
                raise NotImplementedError(
                    f"activating {label!r}={loaded[label]!r} in the supernet is not supported: {kept}"
                    f"where only its supernet value {spec.default!r} can run (a layer argument runs any "
                    "value in Linear, Conv1d/2d/3d, BatchNorm, LayerNorm, MultiheadAttention and "
                    "Dropout); build other values with fixed_arch or space.freeze(arch)"
                )
        activate_mixed(self, loaded)
        for module in self.modules():
            if isinstance(module, (LayerChoice, InputChoice, Repeat)) and module.label in loaded:
                module.activate(loaded[module.label])
        for hook in hooked:
            hook.activate_arch(loaded)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A supernet takes a frozen model's smaller weights into its mixed layers (which embed them).
        if self._retia_space.frozen_arch is None:
            install_mixed(self)
        super()._load_from_state_dict(state_dict, prefix, *args)


def model_wrapper(cls: type[nn.Module]) -> type[ModelSpace]:
    """NNI 2.x's ``@model_wrapper class Net(nn.Module)``: the class as a model space (a subclass of
    it and of :class:`ModelSpace`, under its own name, so instances pickle and ship by reference)."""
    return wrap_model_class(cls, LabelStyle.RETIA)


def wrap_model_class(cls: type[nn.Module], label_style: LabelStyle) -> type[ModelSpace]:
    """``cls`` as a model space naming its unlabelled choices in ``label_style`` (a ModelSpace as is)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"model_wrapper decorates an nn.Module class, got {cls!r}")
    if issubclass(cls, ModelSpace):
        return cls
    namespace = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "_retia_label_style": label_style,
    }
    return type(cls.__name__, (cls, ModelSpace), namespace)


# ---------------------------------------------------------------------------- reachability


def locate_choices(root: nn.Module, arch: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(labels of the choices found in the supernet ``root``, those on the path ``arch`` selects).

    The path leaves out the candidates of a LayerChoice that ``arch`` does not choose (all of
    them are on it when ``arch`` lacks the LayerChoice's label) and the blocks of a Repeat beyond
    the depth ``arch`` chooses. A ValueChoice is found where
    its supernet value is kept (a layer's attribute, such as ``Linear.out_features``); one used
    up while building (``range(depth)``) is found nowhere, and so counts as reached.
    """
    located: set[str] = set()
    reached: set[str] = set()
    seen: set[tuple[int, bool]] = set()

    def note(label: str, on_path: bool) -> None:
        located.add(label)
        if on_path:
            reached.add(label)

    def walk(module: nn.Module, on_path: bool) -> None:
        if (id(module), on_path) in seen:
            return
        seen.add((id(module), on_path))
        for name, value in vars(module).items():
            if name not in ("_modules", "_parameters", "_buffers") and not isinstance(value, nn.Module):
                for label in choice_labels(value):
                    note(label, on_path)
        spec = getattr(module, "spec", None)  # a LayerChoice, an InputChoice
        if isinstance(spec, ChoiceSpec):
            note(spec.label, on_path)
        if isinstance(module, LayerChoice):
            chosen = coerce_choice(module.spec, arch[module.label]) if module.label in arch else MISSING
            for option in module.options:
                walk(module[option], on_path and (chosen is MISSING or option == chosen))
            return
        if isinstance(module, Repeat) and module.spec is not None:
            note(module.spec.label, on_path)
            depth = arch.get(module.spec.label, module.max_depth)  # (invalid values are reported elsewhere)
            built = depth if isinstance(depth, int) and not isinstance(depth, bool) else module.max_depth
            for index, block in enumerate(module.blocks):
                walk(block, on_path and index < built)
            return
        for child in module._modules.values():
            if child is not None:
                walk(child, on_path)

    walk(root, True)
    return located, reached


def _locate_in_supernet(
    cls: type[ModelSpace], args: tuple[Any, ...], kwargs: dict[str, Any], arch: Mapping[str, Any]
) -> tuple[set[str], set[str]]:
    """:func:`locate_choices` in a supernet of ``cls(*args, **kwargs)`` (a fixed build lacks labels)."""
    return locate_choices(cls(*args, **kwargs), arch)


# ---------------------------------------------------------------------------- state dicts


@dataclass(frozen=True)
class _KeyMap:
    """Concrete <-> supernet state-dict keys of one frozen model."""

    to_supernet: dict[str, str]  # concrete key -> supernet key, only where they differ
    module_paths: dict[str, str]  # concrete module path -> supernet module path, where they differ
    unchosen_prefixes: tuple[str, ...]  # "<supernet path of a LayerChoice>.<an unchosen candidate>."
    unbuilt: tuple[tuple[str, int], ...]  # ("<supernet path of a Repeat>.blocks.", first block not built)

    @property
    def to_concrete(self) -> dict[str, str]:
        return {s: c for c, s in self.to_supernet.items()}

    def dropped(self, key: str) -> bool:
        """A supernet key the frozen model has no place for: an unchosen candidate's, or a block's
        beyond a Repeat's chosen depth."""
        if key.startswith(self.unchosen_prefixes):
            return True
        for prefix, first in self.unbuilt:
            index = key[len(prefix) :].partition(".")[0] if key.startswith(prefix) else ""
            if index.isdigit() and int(index) >= first:
                return True
        return False


def _key_map(model: nn.Module) -> _KeyMap:
    module_paths: dict[str, str] = {}
    unchosen: list[str] = []
    unbuilt: list[tuple[str, int]] = []

    def supernet_path(module: nn.Module, path: str) -> str:
        # A chosen module sits in its supernet as the LayerChoice's child named by its key (NNI's
        # layout); the outermost LayerChoice recorded its choice last.
        for _label, key, keys in reversed(module.__dict__.get(CHOSEN_ATTR, ())):
            unchosen.extend(f"{path}.{other}." if path else f"{other}." for other in keys if other != key)
            path = f"{path}.{key}" if path else key
        return path

    def walk(module: nn.Module, cpath: str, spath: str) -> None:
        for name, child in module._modules.items():
            if child is None:
                continue
            c = f"{cpath}.{name}" if cpath else name
            s = supernet_path(child, f"{spath}.{name}" if spath else name)
            if c != s:
                module_paths[c] = s
            if UNBUILT_ATTR in child.__dict__:
                unbuilt.append((f"{s}.blocks.", child.__dict__[UNBUILT_ATTR]))
            unchosen.extend(f"{s}.{unused}." for unused in child.__dict__.get(UNUSED_ATTR, ()))
            walk(child, c, s)

    root = supernet_path(model, "")
    if root:
        module_paths[""] = root
    walk(model, "", root)
    to_supernet: dict[str, str] = {}
    for key in _plain_state(model):
        mod, _, leaf = key.rpartition(".")
        if mod in module_paths:
            target = module_paths[mod]
            to_supernet[key] = f"{target}.{leaf}" if target else leaf
    return _KeyMap(to_supernet, module_paths, tuple(unchosen), tuple(unbuilt))


def _join(prefix: str, path: str) -> str:
    """The state-dict metadata key of module ``path`` under ``prefix`` (``""`` or ending in ``.``)."""
    return prefix + path if path else prefix[:-1]


@dataclass(frozen=True)
class _Entry:
    """One state-dict entry of a model: the module holding it, its name there, its shape."""

    module: nn.Module
    name: str
    shape: tuple[int, ...]


def _plain_state(model: nn.Module) -> dict[str, _Entry]:
    """State-dict entries without running state-dict hooks (ours may be registered already)."""
    entries: dict[str, _Entry] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        destination: dict[str, Any] = {}
        prefix = f"{path}." if path else ""
        module._save_to_state_dict(destination, prefix, keep_vars=True)
        for key, value in destination.items():
            if key not in entries:
                shape = tuple(value.shape) if hasattr(value, "shape") else ()
                entries[key] = _Entry(module, key[len(prefix) :], shape)
    return entries


@contextlib.contextmanager
def original_state_dict_hooks(model: nn.Module) -> Iterator[None]:
    """Within this block ``model`` (built with fixed_arch) loads and saves in its supernet's key layout.

    The supernet's layout is NNI's: a LayerChoice's candidates are its children, so the supernet's
    ``blocks.0.conv3x3.weight`` loads into the frozen ``blocks.0.weight``; keys of unchosen
    candidates are dropped; ``model.state_dict()`` gives supernet keys. A state dict whose keys
    are all the frozen model's own loads as it is (the two layouts can share a key, e.g. a
    list choice's ``block.0.weight``, so a dict is read in one layout as a whole, never per key).
    A supernet tensor larger than the frozen one (a width or a kernel chosen smaller) loads as
    the part of it that the supernet runs for this architecture (:mod:`retia.nn.mixed`).
    """
    keymap = _key_map(model)
    concrete = _plain_state(model)
    to_concrete = keymap.to_concrete

    def fitted(key: str, value: Any) -> Any:
        """``value`` for concrete ``key``: the frozen layer's part of a larger supernet tensor."""
        entry = concrete.get(key)
        shape = tuple(getattr(value, "shape", ()))
        if entry is None or not isinstance(value, torch.Tensor) or shape == entry.shape:
            return value
        if slices_of(entry.module, entry.name, shape, entry.shape):
            return take(entry.module, entry.name, value, entry.shape).clone()
        return value  # a real mismatch: load_state_dict reports it

    def load_pre_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        local = [k for k in state_dict if k.startswith(prefix)]
        values = {k[len(prefix) :]: state_dict.pop(k) for k in local}
        if all(key in concrete for key in values):  # already the frozen model's layout
            for key, value in values.items():
                state_dict[prefix + key] = fitted(key, value)
            return
        for key, value in values.items():
            target = to_concrete.get(key)
            if target is not None:
                state_dict[prefix + target] = fitted(target, value)
            elif not keymap.dropped(key):  # else: a candidate not chosen, a block not built
                state_dict.setdefault(prefix + key, fitted(key, value))  # outside every choice: the same key

    def save_post_hook(module: nn.Module, state_dict: dict[str, Any], prefix: str, _meta: Any) -> None:
        items = list(state_dict.items())
        state_dict.clear()
        for key, value in items:
            local = key[len(prefix) :] if key.startswith(prefix) else None
            if local is not None and local in keymap.to_supernet:
                key = prefix + keymap.to_supernet[local]
            state_dict[key] = value
        metadata = getattr(state_dict, "_metadata", None)
        if isinstance(metadata, dict):
            # all taken out before any is put back: a concrete path can be another one's supernet path
            moved = {
                path: metadata.pop(_join(prefix, path))
                for path in keymap.module_paths
                if _join(prefix, path) in metadata
            }
            for path, meta in moved.items():
                metadata[_join(prefix, keymap.module_paths[path])] = meta

    load_handle = model.register_load_state_dict_pre_hook(load_pre_hook)
    save_handle = model.register_state_dict_post_hook(save_post_hook)
    try:
        yield
    finally:
        load_handle.remove()
        save_handle.remove()
