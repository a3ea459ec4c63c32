"""The research notebooks: each runs top to bottom, and each ``.ipynb`` matches its ``.py``.

The ``.py`` files (jupytext "percent" format) are the source of truth. The
execution tests convert them to notebooks in memory and run them in a real
Jupyter kernel, in a temporary working directory, with
``FUSION_JAX_NOTEBOOK_FAST=1`` (smaller training runs and grids). The sync
tests check that the committed, executed ``.ipynb`` files hold the same cells
as the ``.py`` files (regenerate them with ``python notebooks/build.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01_quickstart", "02_hardware_aware_training", "03_real_chip")
#: Seconds one cell may run (FAST mode cells take a few seconds).
CELL_TIMEOUT = 300
#: The executed notebooks are meant to stay readable on GitHub and light in git.
MAX_IPYNB_BYTES = 500_000


def _cells(nb) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def test_every_notebook_is_listed():
    sources = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
    assert sources == sorted(NAMES)
    readme = (NOTEBOOK_DIR / "README.md").read_text()
    for name in NAMES:
        assert name in readme, f"notebooks/README.md does not list {name}"


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSION_JAX_NOTEBOOK_FAST", "1")  # inherited by the kernel
    nb = jupytext.read(NOTEBOOK_DIR / f"{name}.py")
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code_cells) >= 5
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any exception
    outputs = [out for cell in code_cells for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert all(cell.execution_count is not None for cell in code_cells)
    # Nothing was left in the working directory (the notebooks clean up after themselves).
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_in_sync_with_py(name):
    py = jupytext.read(NOTEBOOK_DIR / f"{name}.py")
    ipynb_path = NOTEBOOK_DIR / f"{name}.ipynb"
    ipynb = jupytext.read(ipynb_path)
    assert _cells(ipynb) == _cells(py), (
        f"{ipynb_path.name} differs from {name}.py: run `python notebooks/build.py {name}`"
    )
    for meta in (py.metadata, ipynb.metadata):
        assert meta["jupytext"]["formats"] == "ipynb,py:percent"
        assert meta["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_ipynb_is_executed_and_small(name):
    path = NOTEBOOK_DIR / f"{name}.ipynb"
    assert path.stat().st_size < MAX_IPYNB_BYTES
    nb = json.loads(path.read_text())
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    # Executed top to bottom once, without errors, with at least one figure.
    assert [cell["execution_count"] for cell in code] == list(range(1, len(code) + 1))
    outputs = [out for cell in code for out in cell["outputs"]]
    assert not [out for out in outputs if out["output_type"] == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs)
