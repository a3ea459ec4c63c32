"""Run a benchmark on the package as it was at another git revision ("before").

``python benchmarks/X.py --before REV`` exports ``fusion_jax/`` at ``REV``
(``git archive``) into a temporary directory and runs the same measurement
there in a subprocess, so that before and after are measured in one run, on
the same machine load.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def exported(rev: str) -> Iterator[str]:
    """A directory holding ``fusion_jax/`` as of git revision ``rev``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "fusion_jax"], capture_output=True, check=True
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        yield tmp


def run_python(code_root: str | None, args: list[str]) -> str:
    """Run ``python args`` with ``code_root`` (default: this checkout) first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([code_root or str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=code_root or ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed:\n{done.stderr[-3000:]}")
    return done.stdout
