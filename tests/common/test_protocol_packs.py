"""A RUN that carries a pack (issue 21) decodes only when its mates make sense: distinct trials, at
most MAX_PACK in all, and no checkpoint to resume; what else comes is refused by decoding, saying why."""

from __future__ import annotations

from typing import Any

import pytest

from retia.errors import ProtocolError
from retia.protocol import MAX_PACK, BlobRef, Mate, MsgType, Run, RunBatch
from retia.session import Session
from tests.common.test_protocol import DIGEST, KEY, _signed

_RUNS = [int(MsgType.RUNS), "", 0, 0, "d", 0.0, 1]


def _run(trial: str = "t", mates: tuple[str, ...] | list[str] = (), resume: bool = False) -> list[Any]:
    """A RUN's fields as they travel: ``mates`` by trial id, ``resume`` a checkpoint among its blobs."""
    blobs = [[DIGEST, 10]] if resume else []
    return [
        trial, 1, b"e", b"m", None, "", 50 << 20, blobs, blobs[0] if resume else None, 7,
        [[mate, 1, b"m", 8, None, ""] for mate in mates],
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("run", "why"),
    [
        (_run(mates=["u", "u"]), "the trials of a pack must be distinct"),
        (_run(mates=["t"]), "the trials of a pack must be distinct"),  # the RUN's own trial again
        (_run(mates=[f"m{i}" for i in range(MAX_PACK)]), f"a pack carries at most {MAX_PACK} trials"),
        (_run(mates=["u"], resume=True), "a pack does not resume from a checkpoint"),
        (_run(mates=["../etc"]), r"items\[0\]\.mates\[0\]: a trial id must be"),
    ],
)
def test_a_run_with_a_pack_that_makes_no_sense_is_refused_by_decoding(run: list[Any], why: str) -> None:
    session = Session(KEY, "w")
    with pytest.raises(ProtocolError, match=why):
        session.parse(_signed(session, _RUNS, [[run]]))


def test_a_full_pack_and_a_lone_resume_decode() -> None:
    mates = [f"m{i}" for i in range(MAX_PACK - 1)]
    full = Run("t", 1, b"e", b"m", seed=7, mates=[Mate(m, 1, b"m", 8) for m in mates])
    resume = BlobRef(DIGEST, 10)
    alone = Run("t", 2, b"e", b"m", blobs=[resume], resume=resume)
    for run in (full, alone):
        [back] = Session(KEY, "d").parse(Session(KEY, "w").frames(MsgType.RUNS, RunBatch([run]))).body.items
        assert back == run
    assert len(full.mates) == MAX_PACK - 1
