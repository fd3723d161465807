"""Trial seeds: every trial runs under one, so it gives the same result alone, packed, elsewhere, again.

A trial's seed (its own, or :func:`trial_seed` of its id) seeds Python's, NumPy's and torch's
generators before its model is built: the model's initialization and its random operations
(dropout) follow from it. The data order does not: every loader of a seeded evaluation draws
from a stream of its own, seeded with :data:`DATA_SEED`, so all trials of an evaluator see the
same batches in the same order (a fair comparison between candidates, and what lets a pack of
trials share each batch). This module imports torch only when a seeded evaluation runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import random
import sys
from collections.abc import Iterator
from typing import Any

from .errors import ConfigError
from .numpy_rng import NumpyGenerator, NumpyState

__all__ = [
    "SEED_MAX",
    "DATA_SEED",
    "trial_seed",
    "check_seed",
    "seed_everything",
    "RngState",
    "seeded",
    "data_stream",
    "drawing_from",
]

SEED_MAX = 2**32 - 1  # NumPy's legacy seeding takes at most 32 bits
DATA_SEED = 0  # the data order of every seeded evaluation (see the module's docstring)

_data: contextvars.ContextVar[RngState | None] = contextvars.ContextVar("retia_data_stream", default=None)


def trial_seed(trial_id: str) -> int:
    """The seed of a trial that was given none: from its id, the same on every machine and run."""
    return int.from_bytes(hashlib.blake2b(trial_id.encode(), digest_size=4).digest(), "big")


def check_seed(seed: Any, what: str = "seed") -> int:
    """``seed`` if it is an integer from 0 to :data:`SEED_MAX`; else a ConfigError saying so."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{what} must be an integer from 0 to {SEED_MAX}, got {seed!r}")
    return seed


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator (when NumPy is loaded) and torch's (CUDA
    lazily: seeding initializes no device)."""
    check_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed)
    import torch

    torch.manual_seed(seed)


class RngState:
    """The state of the global generators (Python, NumPy, torch's CPU one, CUDA's once initialized),
    kept aside: :meth:`active` swaps it in for a block and keeps what the block left."""

    def __init__(self) -> None:
        self._python, self._numpy, self._torch, self._cuda = _capture()
        self._cuda_seed: int | None = None  # CUDA's, once it is initialized (seeding it is lazy)

    @classmethod
    def fresh(cls, seed: int) -> RngState:
        """The state :func:`seed_everything` gives, without touching the current one; CUDA's too,
        when this process initializes CUDA later (as ``torch.manual_seed`` seeds it lazily)."""
        saved = cls()
        seed_everything(seed)
        state = cls()
        state._cuda_seed = seed
        saved._restore()
        return state

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved = RngState()
        self.swap_in()
        try:
            yield
        finally:
            self.swap_out()
            saved.swap_in()

    def swap_in(self) -> None:
        """Make this the state of the global generators (what they held is not kept: for code that
        moves between several states, as a pack between its candidates, and keeps the outer one
        itself)."""
        self._restore()

    def swap_out(self) -> None:
        """Keep what the global generators hold now as this state (after :meth:`swap_in`)."""
        self._python, self._numpy, self._torch, self._cuda = _capture()

    def _restore(self) -> None:
        import torch

        random.setstate(self._python)
        numpy = _numpy_generator()
        if numpy is not None and self._numpy is not None:
            numpy.restore(self._numpy)
        torch.set_rng_state(self._torch)
        if _cuda_initialized(torch):
            if self._cuda is not None:
                torch.cuda.set_rng_state_all(self._cuda)
            elif self._cuda_seed is not None:  # kept before CUDA was up: its first use there
                torch.cuda.manual_seed_all(self._cuda_seed)


def _cuda_initialized(torch: Any) -> bool:
    """Whether this process initialized CUDA (asking initializes nothing)."""
    return bool(torch.cuda.is_initialized())


def _capture() -> tuple[Any, NumpyState | None, Any, Any]:
    import torch

    numpy = _numpy_generator()
    cuda = torch.cuda.get_rng_state_all() if _cuda_initialized(torch) else None
    return (
        random.getstate(),
        numpy.save() if numpy is not None else None,
        torch.get_rng_state(),
        cuda,
    )


_NUMPY: list[NumpyGenerator] = []  # NumPy's global generator, once NumPy is imported


def _numpy_generator() -> NumpyGenerator | None:
    if not _NUMPY:
        numpy = sys.modules.get("numpy")
        if numpy is None:
            return None
        _NUMPY.append(NumpyGenerator(numpy))
    return _NUMPY[0]


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run an evaluation under ``seed`` (None: as the generators stand, nothing seeded): the
    generators are seeded now, and the loaders of its fit (:func:`drawing_from`) draw from the
    data stream."""
    if seed is None:
        yield
        return
    seed_everything(seed)
    token = _data.set(RngState.fresh(DATA_SEED))
    try:
        yield
    finally:
        _data.reset(token)


def data_stream() -> RngState | None:
    """The data stream of the seeded evaluation running here (None when it is not seeded)."""
    return _data.get()


_SEEDED_CLASSES: dict[type, type] = {}
_LOADER_HOOKS = ("train_dataloader", "val_dataloader")


@contextlib.contextmanager
def drawing_from(stream: RngState | None, loaders: list[Any], sources: list[Any]) -> Iterator[None]:
    """For a block, ``loaders`` (each a DataLoader, a list, tuple or dict of them, or None) and the
    loaders ``sources`` (a module, a datamodule) return from their overridden ``train_dataloader``
    / ``val_dataloader`` draw everything they draw from ``stream``: their sampler's shuffling,
    their workers' seeds, their dataset's random transforms in this process. Nothing changes when
    ``stream`` is None (an unseeded evaluation)."""
    if stream is None:
        yield
        return
    from pytorch_lightning.utilities.model_helpers import is_overridden

    swapped: list[tuple[Any, type]] = []

    def seed(value: Any) -> Any:
        for loader in _loaders_of(value):
            if not getattr(type(loader), "_retia_seeded", False):
                swapped.append((loader, type(loader)))
                loader.__class__ = _seeded_class(type(loader))
            loader._retia_stream = stream
        return value

    for value in loaders:
        seed(value)
    hooked: list[tuple[Any, str]] = []
    for source in sources:
        for hook in _LOADER_HOOKS:
            if source is None or hook in vars(source) or not is_overridden(hook, source):
                continue
            original = getattr(source, hook)
            object.__setattr__(source, hook, lambda original=original: seed(original()))
            hooked.append((source, hook))
    try:
        yield
    finally:
        for source, hook in hooked:
            object.__delattr__(source, hook)
        for loader, cls in swapped:
            loader.__class__ = cls
            del loader._retia_stream


def _loaders_of(value: Any) -> list[Any]:
    from torch.utils.data import DataLoader

    if isinstance(value, DataLoader):
        return [value]
    if isinstance(value, (list, tuple)):
        return [loader for item in value for loader in _loaders_of(item)]
    if isinstance(value, dict):
        return [loader for item in value.values() for loader in _loaders_of(item)]
    return []


def _seeded_class(cls: type) -> type:
    """A subclass of the loader's class whose iterators draw under the loader's stream."""
    seeded_cls = _SEEDED_CLASSES.get(cls)
    if seeded_cls is None:
        seeded_cls = _SEEDED_CLASSES[cls] = type(
            cls.__name__,
            (cls,),
            {"__iter__": _seeded_iter, "_retia_seeded": True, "__module__": cls.__module__},
        )
    return seeded_cls


def _seeded_iter(self: Any) -> Any:
    base: Any = type(self).__mro__[1]
    stream: RngState | None = getattr(self, "_retia_stream", None)  # None: rebuilt by Lightning
    if stream is None:
        return base.__iter__(self)
    with stream.active():
        iterator = base.__iter__(self)
    return _SeededIterator(iterator, stream)


class _SeededIterator:
    """A loader's iterator whose every batch is drawn under its data stream."""

    def __init__(self, iterator: Any, stream: RngState) -> None:
        self._iterator = iterator
        self._stream = stream

    def __iter__(self) -> _SeededIterator:
        return self

    def __next__(self) -> Any:
        with self._stream.active():
            return next(self._iterator)

    def __len__(self) -> int:
        return len(self._iterator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)
