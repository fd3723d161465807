"""Every Python block of the README runs, in order, as a user would paste them into a script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"

pytestmark = pytest.mark.slow  # (its Python blocks run end to end)


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)


def test_readme_has_the_two_command_quick_start() -> None:
    text = README.read_text()
    quick_start = text[text.index("## Quick start") : text.index("## Concepts")]
    assert re.findall(r"^make \w+", quick_start, re.MULTILINE) == ["make demo", "make test"]


@pytest.mark.timeout(600)
def test_every_python_block_runs(tmp_path: Path) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 8
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(blocks))
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=580
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "bytes on the wire" in proc.stdout and "model.onnx" in proc.stdout
