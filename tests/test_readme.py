"""The Python examples in README.md run as written."""

import os
import re
import runpy
import sys
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


def test_readme_file_workflow_commands_run_from_any_folder(tmp_path):
    """The bash block of the chip's file workflow, run as written in an empty folder."""
    import subprocess
    import sys

    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "fusion-jax data" in b]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    from fusion_jax.datasets import lenet5_path

    assert (tmp_path / "target.csv").read_bytes() == lenet5_path("target_g40.csv").read_bytes()
    assert (tmp_path / "imported.npz").is_file() and (tmp_path / "noise.json").is_file()


def _readme_tables():
    return runpy.run_path(os.fspath(README.parent / "scripts" / "readme_tables.py"))


def test_every_generated_readme_block_has_its_command():
    tool = _readme_tables()
    names = tool["blocks"](README.read_text())
    assert len(names) == len(set(names))
    assert set(names) <= set(tool["TABLES"])
    # every table the script knows is in README
    assert set(tool["TABLES"]) <= set(names)


def test_regenerating_rewrites_only_the_named_block(tmp_path):
    tool = _readme_tables()
    readme = tmp_path / "README.md"
    text = (
        "intro\n<!-- generated: a -->\nold a\n<!-- end: a -->\nmiddle\n"
        "<!-- generated: b -->\nold b\n<!-- end: b -->\nend\n"
    )
    readme.write_text(text)
    table = tool["Table"]((sys.executable, "-c", "print('new a')"))
    tool["regenerate"](["a"], readme=readme, tables={"a": table})
    assert readme.read_text() == text.replace("old a\n", "```text\nnew a\n```\n")
