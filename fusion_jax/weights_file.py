"""The weights ``.npz`` format of the ``fusion-jax`` export and import commands.

Two layouts are read: every array is a layer named by its key; or the layout
of the shipped LeNet5 data, with ``layer_names`` (and optionally
``layer_ids``, ``layer_classes``: the chip file's header) and one
``layer_<name>`` array per name. Layers are ``[out, in]`` matrices (a conv
may be ``[out, in, *window]``).
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["WeightsFile", "read_weights", "weights_payload"]


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """Layers read from a weights ``.npz`` and the header metadata it carries, if any."""

    layers: dict[str, np.ndarray]
    ids: tuple[int, ...] | None
    classes: tuple[str, ...] | None
    named: bool  # the shipped layout: layer_names and layer_<name> arrays


_META = ("layer_names", "layer_ids", "layer_classes")


def read_weights(path: str) -> WeightsFile:
    """Read layer matrices ``[out, in]`` from an ``.npz`` archive.

    Two layouts: every array is a layer named by its key; or the shipped
    layout, with ``layer_names`` (and optionally ``layer_ids``,
    ``layer_classes``) and one ``layer_<name>`` array per name.
    """
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, zipfile.BadZipFile, EOFError):
        raise ValueError(f"{path}: not a NumPy .npz archive (np.savez) of layer arrays.") from None
    if not isinstance(loaded, Mapping):  # a .npy file gives an array, not an archive
        raise ValueError(f"{path}: a single .npy array, expected an .npz archive of layers.")
    with loaded as archive:
        arrays = {key: archive[key] for key in archive.files}
    if not arrays:
        raise ValueError(f"{path}: the archive holds no arrays.")

    ids = classes = None
    if "layer_names" in arrays:
        names = [str(n) for n in np.atleast_1d(arrays["layer_names"])]
        layers = {}
        for name in names:
            if f"layer_{name}" not in arrays:
                raise ValueError(
                    f"{path}: layer_names lists {name!r} but there is no array 'layer_{name}'."
                )
            layers[name] = arrays[f"layer_{name}"]
        unused = sorted(set(arrays) - set(_META) - {f"layer_{n}" for n in names})
        if unused:
            raise ValueError(
                f"{path}: array(s) {unused} are neither metadata nor listed in layer_names."
            )
        if "layer_ids" in arrays:
            raw_ids = np.atleast_1d(arrays["layer_ids"])
            if raw_ids.dtype.kind not in "iu" or raw_ids.shape != (len(names),):
                raise ValueError(
                    f"{path}: layer_ids must hold {len(names)} integers, one per "
                    f"layer, got {raw_ids.tolist()}."
                )
            ids = tuple(int(i) for i in raw_ids)
        if "layer_classes" in arrays:
            raw = np.atleast_1d(arrays["layer_classes"])
            if raw.dtype.kind != "U" or raw.shape != (len(names),):
                raise ValueError(
                    f"{path}: layer_classes must hold {len(names)} strings, one per layer."
                )
            classes = tuple(str(c) for c in raw)
    else:
        stray = [key for key in _META if key in arrays]
        if stray:
            raise ValueError(f"{path}: has {stray} but no layer_names.")
        layers = dict(arrays)

    for name, weights in layers.items():
        if weights.dtype.kind not in "fiu" or weights.ndim < 2 or weights.size == 0:
            raise ValueError(
                f"{path}: layer {name!r} must be a non-empty numeric array [out, in] (or a "
                f"conv's [out, in, *spatial]), got shape {weights.shape} dtype {weights.dtype}."
            )
    return WeightsFile(layers, ids, classes, named="layer_names" in arrays)


def weights_payload(weights: WeightsFile, layers: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Arrays to save so that :func:`read_weights` reads ``layers`` in ``weights``' layout."""
    if not weights.named:
        return dict(layers)
    payload: dict[str, Any] = {f"layer_{n}": w for n, w in layers.items()}
    payload["layer_names"] = np.array(list(layers))
    if weights.ids is not None:
        payload["layer_ids"] = np.array(weights.ids, dtype=np.int64)
    if weights.classes is not None:
        payload["layer_classes"] = np.array(weights.classes)
    return payload
