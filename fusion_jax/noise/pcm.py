"""The reference's statistical PCM noise model (:class:`PCMLikeNoise`)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fusion_jax import _validation
from fusion_jax.noise._common import (
    PCM_PROG_G_REF,
    _add_read_noise,
    _as_conductances,
    _check_sample_args,
    _compute_dtype,
    _drift_exponent,
)
from fusion_jax.noise._draws import _check_read_noise_switch, _pcm_draws

# --------------------------------------------------------------------------
# PCMLikeNoise
# --------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PCMLikeNoise:
    """The reference's statistical PCM noise model, in conductance space.

    With ``gT`` the target conductance (uS), ``xi`` independent standard
    normal draws per device and per term:

    * programming: ``sigma_prog = (c0 + c1 r + c2 r^2) * g_max / 25`` with
      ``r = gT / g_max``; ``g_prog = max(0, gT + prog_noise_scale * sigma_prog * xi)``.
    * drift: ``nu = |mu + sd * xi| * drift_scale`` with ``mu``, ``sd``
      clipped log-linear functions of ``max(r, 1e-7)``; at
      ``t = t_inference + t0``, ``g_drift = g_prog * (t / t0)^(-nu)`` where
      ``t > t0`` (so ``t_inference = 0`` means no drift).
    * read (1/f) noise: ``Q = min(0.0088 / max((g_prog / g_max)^0.65, 1e-3), 0.2)``,
      ``sigma = Q * sqrt(ln((t + t_read) / (2 t_read)))``;
      ``g = max(0, g_drift + |g_drift| * read_noise_scale * sigma * xi)``.
      Read noise is present at every ``t_inference``, 0 included.

    Every term scales with ``g_max``: the relative weight noise does not
    depend on it. All fields are pytree data fields (``jax.vmap`` over a
    batch of models works).

    **Random draws.** Each device draws two 32-bit random words, which give
    its three normals by the inverse normal CDF: 24 bits each for the
    programming and read normals (tails to 5.4 sigma), 16 bits for the
    drift normal (65,536 equally likely values, tails to 4.3 sigma: the
    mean and std of the drift exponent change by less than 2e-5, relative).
    The static switch ``read_noise`` decides whether the read-noise term is
    computed; ``read_noise_scale`` is its size, data like every other field
    (a literal 0 and a traced 0 give the same, as does ``read_noise=False``).

    The fields are checked when the model is built (``ValueError`` naming
    the field): ``c0``-``c2`` finite, scales >= 0, ``t0`` and ``t_read`` > 0.

    Attributes:
        prog_noise_scale: Multiplier of the programming noise.
        read_noise_scale: Multiplier of the read noise (used when ``read_noise``).
        drift_scale: Multiplier of the drift exponent.
        t0: Time (s) after programming at which drift starts.
        t_read: Read duration (s) in the 1/f noise term.
        c0: Programming-noise coefficient (constant), fitted at 25 uS.
        c1: Programming-noise coefficient (linear).
        c2: Programming-noise coefficient (quadratic).
        read_noise: Whether to compute the read-noise term: a static switch
            (part of the tree structure, fixed under ``jax.jit``). ``False``
            skips the term and its draw; a non-zero ``read_noise_scale``
            other than the default is then refused when the model is built,
            rather than ignored (``PCMLikeNoise(read_noise=False)`` is fine).

    References:
        S. R. Nandakumar et al., "Phase-change memory models for deep
        learning training and inference", ICECS 2019; aihwkit
        ``PCMLikeNoiseModel``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from fusion_jax.noise import PCMLikeNoise
        >>> g = jnp.array([0.0, 10.0, 25.0])
        >>> out = PCMLikeNoise().sample(g, jax.random.key(0), g_max=25.0, t_inference=3600.0)
        >>> out.shape, bool(jnp.all(out >= 0))
        ((3,), True)
        >>> PCMLikeNoise(0.0, 0.0, 0.0).sample(g, jax.random.key(0), g_max=25.0, t_inference=0.0)
        Array([ 0., 10., 25.], dtype=float32)
    """

    #: Each read-back depends only on its own target (for a fixed key): see fj.NoiseModel.
    elementwise: ClassVar[bool] = True

    prog_noise_scale: float | Array = 1.0
    read_noise_scale: float | Array = 1.0
    drift_scale: float | Array = 1.0
    t0: float | Array = 20.0
    t_read: float | Array = 250e-9
    c0: float | Array = 0.26348
    c1: float | Array = 1.9650
    c2: float | Array = -1.1731
    read_noise: bool = dataclasses.field(default=True, metadata={"static": True})

    def __post_init__(self) -> None:
        _validation.check_model_fields(
            self,
            finite=("c0", "c1", "c2"),
            non_negative=("prog_noise_scale", "read_noise_scale", "drift_scale"),
            positive=("t0", "t_read"),
        )
        _check_read_noise_switch(self)

    def sample(
        self,
        conductances: Float[ArrayLike, "*shape"],
        key: PRNGKeyArray,
        *,
        g_max: Float[ArrayLike, ""],
        t_inference: Float[ArrayLike, ""],
    ) -> Float[Array, "*shape"]:
        """Conductances read ``t_inference`` seconds after programming ``conductances``.

        Args:
            conductances: Target conductances in uS (>= 0), any shape.
            key: PRNG key; two 32-bit words per device are drawn from it,
                giving independent normals per device and per term (see
                **Random draws** above). Same key, same result.
            g_max: Largest target conductance in uS, in [10, 40].
            t_inference: Seconds since programming (>= 0).

        Returns:
            The noisy conductances, shape and dtype of ``conductances``,
            never negative. Differentiable w.r.t. ``conductances``,
            ``g_max``, ``t_inference`` and the fields (for a fixed key).

        Raises:
            ArgumentError: for a concrete ``g_max`` outside [10, 40].
            ValueError: for concrete negative or non-finite conductances
                (or, x64 off, float64 ones beyond float32's range), or a
                ``t_inference`` that is NaN, Inf or negative. (The fields
                are checked when the model is built.)
            TypeError: for a key that is not a PRNG key, or a non-numeric
                ``t_inference``.

        Example:
            >>> import jax, jax.numpy as jnp
            >>> from fusion_jax.noise import PCMLikeNoise
            >>> g = jnp.full((4096,), 20.0)
            >>> model = PCMLikeNoise(read_noise_scale=0.0)
            >>> out = model.sample(g, jax.random.key(1), g_max=25.0, t_inference=0.0)
            >>> round(float(out.std()), 1)   # sigma_prog at 20 of 25 uS
            1.1
        """
        g = _as_conductances(conductances)
        _check_sample_args(self, key, g_max, t_inference)
        out_dtype = g.dtype
        dtype = _compute_dtype(out_dtype)
        g = g.astype(dtype)
        g_max = jnp.asarray(g_max, dtype)
        t = jnp.asarray(t_inference, dtype) + self.t0
        with_read = self.read_noise
        xi_prog, xi_drift, xi_read = _pcm_draws(key, g.shape, dtype, with_read=with_read)

        rel = g / g_max
        sigma_prog = (self.c0 + self.c1 * rel + self.c2 * rel**2) * (g_max / PCM_PROG_G_REF)
        g_prog = jnp.maximum(g + self.prog_noise_scale * sigma_prog * xi_prog, 0.0)
        nu = _drift_exponent(rel, xi_drift, self.drift_scale)
        # (t / t0)^(-nu) where t > t0; the log is 0 (no drift) otherwise.
        g_drift = g_prog * jnp.exp(-nu * jnp.log(jnp.maximum(t, self.t0) / self.t0))
        if not with_read:
            return g_drift.astype(out_dtype)
        out = _add_read_noise(
            g_drift, g_prog / g_max, xi_read, self.read_noise_scale, t, self.t_read
        )
        return out.astype(out_dtype)
