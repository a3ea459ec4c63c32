"""aihwkit-compatible class API: port code by changing the import."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jaxtyping import Array, ArrayLike, Float

from fusion_jax import _validation
from fusion_jax.conversion import convert_back_to_weights, convert_to_conductances

__all__ = ["FusionConductanceConverter"]


class FusionConductanceConverter:
    """Drop-in counterpart of aihwkit's ``FusionConductanceConverter``.

    Same call shapes as the reference: ``convert_to_conductances`` returns a
    list of one conductance matrix and the dict ``{"original_weights": w}``,
    and ``convert_back_to_weights`` takes both back. The computations are
    :func:`fusion_jax.convert_to_conductances` and
    :func:`fusion_jax.convert_back_to_weights`: jitted, batched, with no loop
    over rows.

    Args:
        g_max: Largest conductance in uS, in [10, 40].
        strict_aihwkit: Reproduce the reference's zeroed rows on degenerate
            (zero-variance) rows instead of the through-origin fallback.

    Raises:
        ArgumentError: if ``g_max`` is outside [10, 40].

    Example:
        >>> import jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> conv = fj.FusionConductanceConverter(g_max=40)
        >>> [g], params = conv.convert_to_conductances(jnp.array([[1.0, -2.0, 0.5]]))
        >>> g
        Array([[20., 40., 10.]], dtype=float32)
        >>> conv.convert_back_to_weights([g], params)
        Array([[ 1. , -2. ,  0.5]], dtype=float32)
    """

    def __init__(self, g_max: float = 40, strict_aihwkit: bool = False) -> None:
        _validation.check_g_max(g_max)
        _validation.check_flag(strict_aihwkit, "strict_aihwkit", "FusionConductanceConverter")
        self.g_max = g_max
        self.strict_aihwkit = strict_aihwkit

    def __repr__(self) -> str:
        return f"{type(self).__name__}(g_max={self.g_max!r}, strict_aihwkit={self.strict_aihwkit})"

    def convert_to_conductances(
        self, weights: Float[ArrayLike, "*batch out in"]
    ) -> tuple[list[Float[Array, "*batch out in"]], dict[str, jax.Array]]:
        """Convert weights to ``([conductances], {"original_weights": weights})``."""
        g, params = convert_to_conductances(weights, self.g_max)
        return [g], params.as_dict()

    def convert_back_to_weights(
        self,
        conductances: Sequence[Float[ArrayLike, "*batch out in"]],
        params: Mapping[str, Any],
    ) -> Float[Array, "*batch out in"]:
        """Reconstruct weights from ``[conductances]`` and the params dict.

        Raises:
            ValueError: if ``conductances`` is not a list of exactly one array,
                or ``params`` lacks ``original_weights``.
        """
        if isinstance(conductances, jax.Array) or not isinstance(conductances, Sequence):
            raise ValueError("conductances must contain exactly 1 element")
        if len(conductances) != 1:
            raise ValueError("conductances must contain exactly 1 element")
        if not isinstance(params, Mapping) or "original_weights" not in params:
            raise ValueError("params do not contain original_weights")
        return convert_back_to_weights(conductances[0], params, strict_aihwkit=self.strict_aihwkit)
