"""NumPy's global generator (``numpy.random.*``) saved and restored in about a microsecond.

A pack swaps each candidate's generators in and out around every step of its code; NumPy's own
``get_state``/``set_state`` copy the 624 words of its Mersenne Twister one by one in Python (about
30 us each way, more than the rest of the swap together). Here the words are read and written
as one block of the generator's own memory, whose layout is checked once against ``get_state``.
NumPy also keeps a Gaussian aside between calls (``has_gauss``) where no array can reach it: the
fast path is taken only when both the generator and the saved state are known to hold none, and
the generator has drawn nothing since that was known (its words unchanged); otherwise NumPy's own
functions do the work.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

__all__ = ["NumpyState", "NumpyGenerator"]

_WORDS = 625  # MT19937's state: 624 key words, then its position
_SIZE = 4 * _WORDS


@dataclass(frozen=True)
class NumpyState:
    """One saved state of the global generator: its words (None where the fast path is off), and
    NumPy's legacy state tuple when the fast path could not prove it holds no Gaussian."""

    words: bytes | None
    legacy: tuple[Any, ...] | None  # None: no Gaussian kept aside (the words say it all)


class NumpyGenerator:
    """The global generator of one imported NumPy, with :meth:`save` and :meth:`restore`."""

    def __init__(self, numpy: Any) -> None:
        self._numpy = numpy
        self._address = _words_address(numpy)  # None: NumPy's own functions only
        self._clear: bytes | None = None  # its words when it was last known to keep no Gaussian aside

    def _holds_no_gaussian(self, words: bytes) -> bool:
        """Whether the generator, holding ``words``, keeps no Gaussian aside: known so at some point,
        and nothing drawn since (keeping one draws words, so the words would differ)."""
        return words == self._clear

    def save(self) -> NumpyState:
        if self._address is None:
            return NumpyState(None, self._numpy.random.get_state())
        words = ctypes.string_at(self._address, _SIZE)
        if self._holds_no_gaussian(words):
            return NumpyState(words, None)
        legacy = self._numpy.random.get_state()
        if legacy[3] == 0:  # has_gauss
            self._clear = words
            return NumpyState(words, None)
        self._clear = None
        return NumpyState(words, legacy)

    def restore(self, state: NumpyState) -> None:
        address, words = self._address, state.words
        if address is not None and words is not None and state.legacy is None:
            if self._holds_no_gaussian(ctypes.string_at(address, _SIZE)):
                ctypes.memmove(address, words, _SIZE)
                self._clear = words
                return
        legacy = state.legacy
        if legacy is None:
            key = self._numpy.frombuffer(state.words, dtype=self._numpy.uint32)
            legacy = ("MT19937", key[: _WORDS - 1], int(key[_WORDS - 1]), 0, 0.0)
        self._numpy.random.set_state(legacy)
        self._clear = state.words if state.legacy is None else None


def _words_address(numpy: Any) -> int | None:
    """The address of the global MT19937's state words, or None when its memory does not hold
    what ``get_state`` says it holds (another layout, another bit generator)."""
    try:
        address = int(numpy.random.mtrand._rand._bit_generator.ctypes.state_address)
        before = numpy.random.get_state()
        saved = ctypes.string_at(address, _SIZE)
        if not _matches(numpy, saved, before):
            return None
        numpy.random.random_sample(700)  # past the 624 words: every word of the key changes
        ctypes.memmove(address, saved, _SIZE)
        if not _matches(numpy, saved, numpy.random.get_state()):  # the write did not land
            numpy.random.set_state(before)
            return None
        return address
    except Exception:  # any surprise: NumPy's own (slow, always right) path
        return None


def _matches(numpy: Any, saved: bytes, legacy: tuple[Any, ...]) -> bool:
    words = numpy.frombuffer(saved, dtype=numpy.uint32)
    return (
        legacy[0] == "MT19937"
        and bool(numpy.array_equal(words[: _WORDS - 1], legacy[1]))
        and int(words[_WORDS - 1]) == int(legacy[2])
    )
