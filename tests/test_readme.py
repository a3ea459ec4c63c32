"""The Python examples in README.md run as written."""

import os
import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "example.py"
    script.write_text(BLOCKS[index])
    runpy.run_path(os.fspath(script), run_name="__main__")
    out = capsys.readouterr().out
    if "print(g)" in BLOCKS[index]:
        assert "[[20. 40. 10.]" in out
    if "accuracy on the chip" in BLOCKS[index]:
        accuracy = float(out.rsplit(":", 1)[1])
        assert accuracy > 0.8
