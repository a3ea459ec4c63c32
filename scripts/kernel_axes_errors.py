"""Relative error of one layer of a stacked kernel and one head of an attention kernel.

Programmed with the kernel's axes (every output feature of every layer one chip
row: what fusion_jax does) against the old reading of any kernel as
``[..., out]`` with every other axis lumped into the inputs (one scale shared
by all stacked layers; attention rows along head_dim across heads). Default
chip noise at g_max = 25 uS, read at t = 0; mean over 8 keys. The layers and
heads have different magnitudes, as trained ones do: layer l (head h) is
scaled by 10**l (4**h), so layer 0 and head 0 are the smallest.

Usage::

    python scripts/kernel_axes_errors.py      # prints a markdown table (README)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import fusion_jax as fj
from fusion_jax.layout import KernelAxes

G_MAX = 25.0
KEYS = jax.random.split(jax.random.key(0), 8)


def relative_error(kernel: jax.Array, axes: KernelAxes, part: tuple) -> float:
    def one(key: jax.Array) -> jax.Array:
        programmed = fj.program_kernel(kernel, key, axes=axes, g_max=G_MAX)
        w = kernel[part]
        return jnp.linalg.norm(programmed[part] - w) / jnp.linalg.norm(w)

    return float(np.mean(jax.vmap(one)(KEYS)))


def main() -> None:
    rng = np.random.default_rng(0)
    stacked = rng.standard_normal((3, 128, 128)) * (10.0 ** np.arange(3))[:, None, None]
    stacked = jnp.asarray(stacked, jnp.float32)  # 3 Linear(128, 128) stacked by nnx.scan
    query = rng.standard_normal((64, 4, 16)) * (4.0 ** np.arange(4))[None, :, None]
    query = jnp.asarray(query, jnp.float32)  # nnx.MultiHeadAttention query [in, heads, dim]
    lumped3 = KernelAxes(inputs=(0, 1), outputs=(2,))  # every axis but the last: inputs
    rows = [
        (
            "layer 0 of 3 stacked `[3, 128, 128]`",
            relative_error(stacked, KernelAxes.dense().stacked(), (0,)),
            relative_error(stacked, lumped3, (0,)),
        ),
        (
            "head 0 of an attention query `[64, 4, 16]`",
            relative_error(query, KernelAxes.general(1, 2), (slice(None), 0)),
            relative_error(query, lumped3, (slice(None), 0)),
        ),
    ]
    print("| part | kernel axes (one row per output feature) | last axis, rest lumped |")
    print("| --- | --- | --- |")
    for name, good, lumped in rows:
        print(f"| {name} | {good:.2f} | {lumped:.2f} |")


if __name__ == "__main__":
    main()
