"""A trial's files with names that are not UTF-8 come home under a lossless name; the agent lives on."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any

from retia import FunctionalEvaluator, report_final_result

from ..clusters import fast_cluster
from ..integration import fits

RAW_NAME = b"r\xe9sultat.txt"  # Latin-1, not UTF-8: a name a careless trial writes easily


def writes_a_latin1_name(model_cls: Any) -> None:
    output = os.environ["RETIA_OUTPUT_DIR"]
    with open(os.path.join(os.fsencode(output), RAW_NAME), "wb") as f:
        f.write(b"0.93\n")
    report_final_result(1.0)


def test_a_non_utf8_file_name_ships_percent_encoded_and_the_worker_goes_on(tmp_path: Path) -> None:
    with fast_cluster(workers=1, home=tmp_path / "cluster") as backend:
        trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(writes_a_latin1_name))
        assert trial.result(timeout=60) == 1.0
        assert trial.output_dir is not None
        shipped = trial.output_dir / "r%E9sultat.txt"
        assert shipped.read_bytes() == b"0.93\n"
        assert urllib.parse.unquote_to_bytes(shipped.name) == RAW_NAME  # lossless
        after = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        after.result(timeout=60)  # the same (only) worker runs the next trial
