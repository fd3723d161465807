"""A one-shot experiment whose client (and its private cluster) is SIGKILLed mid-supernet-training:
Experiment.resume re-attaches to the one trial, which continues from its last checkpoint."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retia import Experiment
from tests.common.oneshot_spaces import UselessOpSpace

pytestmark = [pytest.mark.slow, pytest.mark.timeout(280)]
EPOCHS = 8

_RUNNER = """
import sys
sys.path.insert(0, {root!r})
import retia.lightning as pl
from retia import Experiment
from retia.oneshot import RandomOneShot
from tests.common.oneshot_spaces import MyModule, UselessOpSpace, digits

if sys.argv[1] == "start":
    evaluator = pl.Lightning(
        MyModule(),
        pl.Trainer(max_epochs={epochs}, logger=False, enable_checkpointing=False),
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val", 256),
    )
    Experiment(UselessOpSpace(), evaluator, RandomOneShot(seed=0), path={path!r}).run(workers=2, live=False)
else:
    Experiment.resume({path!r}, workers=2, live=False)
"""


def _checkpoints(journal: Path) -> int:
    if not journal.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM checkpoints").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_a_killed_one_shot_experiment_resumes_its_supernet_from_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "exp"
    script = tmp_path / "run.py"
    script.write_text(_RUNNER.format(root=str(Path(__file__).parents[2]), path=str(path), epochs=EPOCHS))
    proc = subprocess.Popen(
        [sys.executable, str(script), "start"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its private cluster dies with it (the group is killed)
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 180
    journals = path / "cluster"
    while not any(_checkpoints(j) for j in journals.glob("**/journal.sqlite")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint reached the dispatcher"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    [before] = Experiment.load(path).results
    assert before.final is None  # killed mid-training

    subprocess.run([sys.executable, str(script), "resume"], check=True, timeout=240, capture_output=True)
    exp = Experiment.load(path)
    [after] = exp.results  # the same one trial, re-attached: no second supernet
    assert after.trial_id == before.trial_id and after.state == "SUCCEEDED", after.reason
    assert after.attempt >= 2 and set(after.arch) == set(UselessOpSpace().search_space())
    _, epochs_run = (Path(after.output_dir) / "my_module.txt").read_text().split()
    assert 1 <= int(epochs_run) < EPOCHS  # the resumed attempt ran only what the checkpoint had not
    assert exp.export_top_models() == [after.arch]
