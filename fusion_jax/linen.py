"""Flax Linen layers whose forward pass programs the kernel onto the simulated chip.

:class:`FusionDense` and :class:`FusionConv` are ``nn.Dense`` and ``nn.Conv``
(subclasses: same attributes, same parameter tree, same initial values for
the same ``params`` key) whose kernel goes through
:func:`fusion_jax.program_kernel` before it is used, for hardware-aware
training.

Modes follow ``nn.Dropout``:

* training (``deterministic=False``): every ``apply`` programs the kernel
  afresh with a key from the RNG collection ``rng_collection`` (default
  ``"noise"``: ``model.apply(variables, x, rngs={"noise": key})``);
* evaluation (``deterministic=True``): no noise is drawn and the kernel is
  used as is (digital weights), exactly as the plain layer. To evaluate the
  network as programmed on a chip (one programmed copy for the whole test
  set), program its variables once with :func:`fusion_jax.program_params`.

``init`` never programs (it needs no ``"noise"`` key), and biases are never
programmed: they are added digitally.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fusion_jax import _validation
from fusion_jax._linen_layers import (
    FusionDenseGeneral,
    FusionDotGeneral,
    FusionEinsum,
    Fusionized,
    fusion_interceptor,
    fusionize,
    kernel_layouts,
    layer_kernel_axes,
)
from fusion_jax.program_params import program_kernel
from fusion_jax.programming import DEFAULT_NOISE, _check_gradient_mode, resolve_noise

__all__ = [
    "FusionConv",
    "FusionDense",
    "FusionDenseGeneral",
    "FusionDotGeneral",
    "FusionEinsum",
    "Fusionized",
    "fusion_interceptor",
    "fusionize",
    "kernel_layouts",
    "layer_kernel_axes",
]


def _check_settings(layer: nn.Module) -> None:
    _validation.check_g_max(layer.g_max)
    _check_gradient_mode(layer.gradient)


def _plain_layer(layer: nn.Module, plain_cls: type[nn.Module]) -> nn.Module:
    """An unbound ``plain_cls`` with ``layer``'s attributes, mask cleared.

    The mask, if any, is applied to the kernel before programming.
    """
    kwargs = {
        f.name: getattr(layer, f.name)
        for f in dataclasses.fields(plain_cls)
        if f.init and f.name not in ("parent", "name")
    }
    if "mask" in kwargs:
        kwargs["mask"] = None
    return plain_cls(**kwargs, parent=None)


def _forward(
    layer: nn.Module,
    plain_cls: type[nn.Module],
    inputs: jax.Array,
    kernel_shape: tuple[int, ...],
    deterministic: bool | None,
    rng: PRNGKeyArray | None,
) -> jax.Array:
    """Create (or read) the parameters, program the kernel, run the plain layer."""
    _check_settings(layer)
    # Same names, order, initialisers and shapes as the plain layer: same parameters.
    kernel = layer.param("kernel", layer.kernel_init, kernel_shape, layer.param_dtype)
    params = {"kernel": kernel}
    if layer.use_bias:
        params["bias"] = layer.param("bias", layer.bias_init, (layer.features,), layer.param_dtype)
    mask = getattr(layer, "mask", None)
    if mask is not None:
        if mask.shape != kernel_shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} differs from the kernel shape {kernel_shape}."
            )
        params["kernel"] = kernel * mask
    if deterministic is None:
        deterministic = layer.deterministic
    if deterministic is None:
        raise ValueError(
            f"{type(layer).__name__} needs `deterministic`: set the attribute or pass it to "
            "the call (True: digital weights, False: programmed on every call)."
        )
    if not deterministic and not layer.is_initializing():
        noise = resolve_noise(layer.noise)
        key = None
        if noise is not None:
            key = rng if rng is not None else layer.make_rng(layer.rng_collection)
        params["kernel"] = program_kernel(
            params["kernel"],
            key,
            g_max=layer.g_max,
            noise=noise,
            t_inference=layer.t_inference,
            strict_aihwkit=layer.strict_aihwkit,
            gradient=layer.gradient,
        )
    return _plain_layer(layer, plain_cls).apply({"params": params}, inputs)


class FusionDense(nn.Dense):
    """``nn.Dense`` whose kernel is programmed onto the simulated chip on each apply.

    All of ``nn.Dense``'s attributes are accepted and mean the same, and the
    parameter tree (``kernel [in, out]``, ``bias [out]``) is the same, so
    variables move between the two. In training mode the kernel is
    programmed with :func:`fusion_jax.program_kernel` (one chip row per
    output feature) using a key from the ``rng_collection`` RNGs; in
    evaluation mode the digital kernel is used as is. The bias is digital.

    Attributes:
        g_max: Largest conductance in uS, in [10, 40].
        noise: A noise model (:mod:`fusion_jax.noise`), the default chip
            model, or ``None`` for the noise-free round trip.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` or ``"ste"`` (straight-through); see
            :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        deterministic: ``True`` for evaluation mode (digital weights),
            ``False`` for training mode; a call-time ``deterministic``
            overrides it. ``None`` requires it at call time (as ``nn.Dropout``).
        rng_collection: The RNG collection the noise keys come from.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> layer = fj.linen.FusionDense(4, g_max=25.0)
        >>> x = jnp.ones((2, 3))
        >>> variables = layer.init(jax.random.key(0), x)     # no "noise" key needed
        >>> y1 = layer.apply(variables, x, rngs={"noise": jax.random.key(1)})
        >>> y2 = layer.apply(variables, x, rngs={"noise": jax.random.key(2)})
        >>> bool((y1 != y2).any())
        True
        >>> y_eval = layer.apply(variables, x, deterministic=True)   # digital weights
        >>> p = variables["params"]
        >>> bool(jnp.allclose(y_eval, x @ p["kernel"] + p["bias"]))
        True
    """

    g_max: float = 40.0
    noise: Any = DEFAULT_NOISE
    t_inference: float = 0.0
    gradient: str = "exact"
    strict_aihwkit: bool = False
    deterministic: bool | None = False
    rng_collection: str = "noise"

    @nn.compact
    def __call__(
        self,
        inputs: Float[ArrayLike, "*batch in"],
        deterministic: bool | None = None,
        rng: PRNGKeyArray | None = None,
    ) -> Float[Array, "*batch out"]:
        """Apply the layer with the kernel as programmed (training) or digital (eval).

        Args:
            inputs: Inputs ``[..., in]``.
            deterministic: Overrides the ``deterministic`` attribute for this call.
            rng: A PRNG key to program with, instead of one from ``rng_collection``.

        Returns:
            The outputs ``[..., features]``.
        """
        inputs = jax.numpy.asarray(inputs)
        kernel_shape = (inputs.shape[-1], self.features)
        return _forward(self, nn.Dense, inputs, kernel_shape, deterministic, rng)


class FusionConv(nn.Conv):
    """``nn.Conv`` whose kernel is programmed onto the simulated chip on each apply.

    All of ``nn.Conv``'s attributes are accepted and mean the same, and the
    parameter tree (``kernel [*kernel_size, in/groups, out]``, ``bias
    [out]``) is the same. Each output channel (the kernel's last axis) is one
    row on the chip (:func:`fusion_jax.layout.kernel_to_rows`). A ``mask`` is
    applied before programming. Modes, attributes and the digital bias are
    as for :class:`FusionDense`.

    Attributes:
        g_max: Largest conductance in uS, in [10, 40].
        noise: A noise model, the default chip model, or ``None``.
        t_inference: Seconds since programming at which the chip is read.
        gradient: ``"exact"`` or ``"ste"``; see :func:`fusion_jax.program`.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        deterministic: ``True`` for evaluation mode, ``False`` for training
            mode, ``None`` to require it at call time.
        rng_collection: The RNG collection the noise keys come from.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import fusion_jax as fj
        >>> conv = fj.linen.FusionConv(4, (3, 3))
        >>> x = jnp.ones((1, 8, 8, 2))
        >>> variables = conv.init(jax.random.key(0), x)
        >>> conv.apply(variables, x, rngs={"noise": jax.random.key(1)}).shape
        (1, 8, 8, 4)
        >>> plain = nn.Conv(4, (3, 3)).apply(variables, x)
        >>> bool(jnp.allclose(conv.apply(variables, x, deterministic=True), plain))
        True
    """

    g_max: float = 40.0
    noise: Any = DEFAULT_NOISE
    t_inference: float = 0.0
    gradient: str = "exact"
    strict_aihwkit: bool = False
    deterministic: bool | None = False
    rng_collection: str = "noise"

    @nn.compact
    def __call__(
        self,
        inputs: Float[ArrayLike, "*batch ..."],
        deterministic: bool | None = None,
        rng: PRNGKeyArray | None = None,
    ) -> Float[Array, "*batch ..."]:
        """Apply the convolution with the kernel as programmed (training) or digital (eval).

        Args:
            inputs: Inputs ``[*batch, *spatial, in]`` (channels last).
            deterministic: Overrides the ``deterministic`` attribute for this call.
            rng: A PRNG key to program with, instead of one from ``rng_collection``.

        Returns:
            The convolved outputs, channels last.
        """
        inputs = jax.numpy.asarray(inputs)
        kernel_size = (
            (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        )
        in_features = inputs.shape[-1]
        if in_features % self.feature_group_count:
            raise ValueError(
                f"FusionConv: {in_features} input channels are not divisible by "
                f"feature_group_count={self.feature_group_count}."
            )
        kernel_shape = (*kernel_size, in_features // self.feature_group_count, self.features)
        return _forward(self, nn.Conv, inputs, kernel_shape, deterministic, rng)
