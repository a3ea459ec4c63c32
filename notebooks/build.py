"""Regenerate the executed ``.ipynb`` of each notebook from its jupytext ``.py`` source.

The ``.py`` files (jupytext "percent" format) are the source of truth; the
``.ipynb`` files are generated from them and executed, so that they show
their outputs on GitHub. Run from the repository root::

    python notebooks/build.py                 # every notebook
    python notebooks/build.py 01_quickstart   # some of them

Each notebook is executed in a fresh ``python3`` kernel whose working
directory is a temporary folder (a notebook must not write into the
repository). The result is written deterministically: no execution
timestamps, and cell ids derived from the cell sources, so rebuilding an
unchanged notebook changes no byte except where an output changed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
#: Seconds one cell may run before the build fails.
CELL_TIMEOUT = 900


def notebook_sources() -> list[Path]:
    """The notebooks' ``.py`` sources, ``NN_name.py``, in order."""
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))


def stable_cell_ids(nb: nbformat.NotebookNode) -> None:
    """Give every cell an id derived from its type and source (unique within the notebook)."""
    seen: dict[str, int] = {}
    for cell in nb.cells:
        digest = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()[:8]
        count = seen.get(digest, 0)
        seen[digest] = count + 1
        cell["id"] = digest if count == 0 else f"{digest}-{count}"


def merge_streams(nb: nbformat.NotebookNode) -> None:
    """Join consecutive outputs of the same stream in each cell.

    The kernel splits a cell's printed text into several outputs depending on
    timing (for example before and after a compilation); joining them makes
    the result independent of it.
    """
    for cell in nb.cells:
        merged: list[nbformat.NotebookNode] = []
        for out in cell.get("outputs", []):
            prev = merged[-1] if merged else None
            if (
                out.output_type == "stream"
                and prev is not None
                and prev.output_type == "stream"
                and prev.name == out.name
            ):
                prev.text += out.text
            else:
                merged.append(out)
        if "outputs" in cell:
            cell.outputs = merged


def execute(source: Path) -> nbformat.NotebookNode:
    """Read a jupytext ``.py`` notebook and execute it in a temporary working directory.

    Raises:
        nbclient.exceptions.CellExecutionError: if a cell raises.
    """
    nb = jupytext.read(source)
    with tempfile.TemporaryDirectory(prefix="fusion_jax_nb_") as workdir:
        client = NotebookClient(
            nb,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": workdir}},
        )
        client.execute()
    nb.metadata.get("language_info", {}).pop("version", None)
    merge_streams(nb)
    stable_cell_ids(nb)
    return nb


def build(source: Path) -> Path:
    """Execute ``source`` and write the paired ``.ipynb`` next to it; return its path."""
    target = source.with_suffix(".ipynb")
    nb = execute(source)
    jupytext.write(nb, target, fmt="ipynb")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: build the named notebooks, or all of them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names such as 01_quickstart")
    args = parser.parse_args(argv)
    sources = notebook_sources()
    if args.names:
        by_name = {p.stem: p for p in sources}
        unknown = [n for n in args.names if n.removesuffix(".py") not in by_name]
        if unknown:
            parser.error(f"unknown notebook(s) {unknown}; choose from {sorted(by_name)}")
        sources = [by_name[n.removesuffix(".py")] for n in args.names]
    for source in sources:
        target = build(source)
        print(f"{target.relative_to(HERE.parent)}: {target.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
