"""Data shipped with the package: the real Fusion-chip LeNet5 read-back.

Public data from IBM's AI Hardware Center "Composer" demo: a hardware-aware
trained LeNet5 (FashionMNIST) whose four analog layers were converted to
conductances at g_max = 40 uS, programmed on the IBM Fusion chip and read
back. See ``fusion_jax/data/fusion_lenet5/README.md``.
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["Lenet5Readback", "lenet5_path", "lenet5_readback"]

_FILES = ("programmed.csv", "target_g40.csv", "weights.npz", "README.md")


def lenet5_path(name: str) -> Path:
    """Path of a shipped LeNet5 read-back file.

    Args:
        name: One of ``programmed.csv``, ``target_g40.csv``, ``weights.npz``,
            ``README.md``.

    Returns:
        The file's path inside the installed package.

    Example:
        >>> import fusion_jax as fj
        >>> fj.datasets.lenet5_path("weights.npz").name
        'weights.npz'
    """
    if name not in _FILES:
        raise ValueError(f"unknown LeNet5 data file {name!r}; choose one of {_FILES}.")
    return Path(str(resources.files("fusion_jax").joinpath("data", "fusion_lenet5", name)))


@dataclasses.dataclass(frozen=True)
class Lenet5Readback:
    """The shipped LeNet5 chip data, per layer name (``"0"``, ``"3"``, ``"8"``, ``"10"``).

    Attributes:
        weights: Layer weights ``[out, in]`` (float32, reference layout).
        targets: Target conductances written by the reference at g_max = 40 uS.
        programmed: Conductances read back from the real chip (uS).
        ids: Layer ids of the file header.
        classes: Layer class names of the file header.
    """

    weights: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    programmed: dict[str, np.ndarray]
    ids: tuple[int, ...]
    classes: tuple[str, ...]

    def flat_targets(self) -> np.ndarray:
        """All target conductances of all layers, one flat array."""
        return np.concatenate([v.ravel() for v in self.targets.values()])

    def flat_programmed(self) -> np.ndarray:
        """All read-back conductances, in the order of :meth:`flat_targets`."""
        return np.concatenate([self.programmed[k].ravel() for k in self.targets])


@functools.cache
def lenet5_readback() -> Lenet5Readback:
    """Load the shipped LeNet5 weights, targets and real chip read-back.

    Returns:
        A :class:`Lenet5Readback` (cached; treat its arrays as read-only).

    Example:
        >>> import fusion_jax as fj
        >>> data = fj.datasets.lenet5_readback()
        >>> {k: v.shape for k, v in data.weights.items()}
        {'0': (16, 25), '3': (32, 400), '8': (128, 512), '10': (10, 128)}
    """
    from fusion_jax.chip_file import read_chip_file

    with np.load(lenet5_path("weights.npz")) as npz:
        names = [str(n) for n in npz["layer_names"]]
        weights = {n: npz[f"layer_{n}"] for n in names}
        ids = tuple(int(i) for i in npz["layer_ids"])
        classes = tuple(str(c) for c in npz["layer_classes"])
    targets = read_chip_file(lenet5_path("target_g40.csv")).layers
    programmed = read_chip_file(lenet5_path("programmed.csv")).layers
    return Lenet5Readback(
        weights=weights,
        targets={n: targets[n] for n in names},
        programmed={n: programmed[n] for n in names},
        ids=ids,
        classes=classes,
    )
