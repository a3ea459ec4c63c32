"""Regenerate the tables (and the sweep plot) that README.md shows, from this code.

Every generated block of README.md sits between two markers::

    <!-- generated: NAME -->
    ...
    <!-- end: NAME -->

and this script rewrites the text between them with what the command
registered for ``NAME`` prints now (in a ``text`` code block where the
output is plain text). Nothing else in README.md changes. These tables
are deterministic (fixed seeds) on one machine. XLA compiles for the CPU
it runs on, so long trainings can end a few tenths of a point apart on
another machine: when the tables were regenerated on another machine,
the code that made the earlier ones gave the new numbers there too.
The speed tables are measurements of a
machine, not results of the code alone: each names the benchmark command
(``benchmarks/``) that prints it.

Usage::

    python scripts/readme_tables.py                  # every deterministic table
    python scripts/readme_tables.py experiment sweep # just these
    python scripts/readme_tables.py --list           # the names and their commands
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PY = sys.executable


@dataclasses.dataclass(frozen=True)
class Table:
    """How one README block is made: a command whose standard output is the block."""

    command: tuple[str, ...]
    fence: bool = True  # wrap the output in a ```text block (False: it is markdown)
    after: str = ""  # a file the command writes into its working folder, copied to ROOT/after


def _python(code: str) -> tuple[str, ...]:
    return (PY, "-c", code)


TABLES: dict[str, Table] = {
    "sweep": Table(
        _python(
            "import contextlib, io, sys; from fusion_jax.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    status = main(['sweep', '--out', '.', '--no-progress'])\n"
            "print(out.getvalue().rsplit('\\nwrote ', 1)[0].rstrip())\n"
            "sys.exit(status)"
        ),
        after="docs/sweep.png",
    ),
    "experiment": Table(
        _python("from fusion_jax.training import hardware_aware_experiment as e; print(e())")
    ),
    "calibration": Table((PY, "scripts/calibration_table.py", "--validation-only")),
    "transformer": Table((PY, "scripts/transformer_table.py"), fence=False),
    "transformer_extra": Table(
        (PY, "scripts/transformer_table.py", "--recipes", "extra"), fence=False
    ),
    "lenet5": Table((PY, "scripts/lenet5_import.py", "--markdown"), fence=False),
    "kernel_axes": Table((PY, "scripts/kernel_axes_errors.py"), fence=False),
}

_BLOCK = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end: (?P=name) -->)", re.S
)


def blocks(text: str) -> list[str]:
    """The names of the generated blocks in ``text``, in order."""
    return [m["name"] for m in _BLOCK.finditer(text)]


def _run(name: str, table: Table) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
        command = [str(ROOT / c) if c.endswith(".py") and "/" in c else c for c in table.command]
        done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name}: {' '.join(table.command)} failed:\n{done.stderr}")
        if table.after:
            shutil.copyfile(Path(tmp, Path(table.after).name), ROOT / table.after)
    out = done.stdout.rstrip("\n") + "\n"
    return f"```text\n{out}```\n" if table.fence else out


def regenerate(names: list[str], readme: Path = README, tables: dict[str, Table] = TABLES) -> None:
    """Rewrite the blocks ``names`` of ``readme`` (atomically, once all are made)."""
    text = readme.read_text()
    present = blocks(text)
    for name in names:
        if name not in present:
            raise SystemExit(f"README.md has no block '<!-- generated: {name} -->'.")
    bodies = {}
    for name in names:
        print(f"regenerating {name}: {' '.join(tables[name].command)}", file=sys.stderr)
        bodies[name] = _run(name, tables[name])
    text = readme.read_text()  # anew: README may have been edited while the tables ran
    text = _BLOCK.sub(
        lambda m: m[1] + bodies.get(m["name"], m["body"]) + m[4] if m["name"] in bodies else m[0],
        text,
    )
    tmp = readme.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="blocks to regenerate (default: all)")
    parser.add_argument("--list", action="store_true", help="list the blocks and commands")
    args = parser.parse_args()
    if args.list:
        for name, table in TABLES.items():
            print(f"{name:<18} {' '.join(table.command)}")
        return
    unknown = sorted(set(args.names) - set(TABLES))
    if unknown:
        parser.error(f"unknown table(s) {unknown}; see --list")
    names = args.names or list(TABLES)
    regenerate(names)


if __name__ == "__main__":
    main()
