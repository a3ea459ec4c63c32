"""The speed paths change no result: one-array derivative of the noise, compile counts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fusion_jax as fj
from fusion_jax.noise import FusionChipNoise, PCMLikeNoise

W = jax.random.normal(jax.random.key(0), (6, 16), jnp.float32) * 0.1
KEY = jax.random.key(3)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Opaque:
    """The same model, without ``elementwise``: program differentiates its code as is."""

    model: object

    def sample(self, conductances, key, *, g_max, t_inference):
        return self.model.sample(conductances, key, g_max=g_max, t_inference=t_inference)


MODELS = [
    FusionChipNoise.lenet5_readback(),
    PCMLikeNoise(),
    FusionChipNoise.lenet5_readback(read_noise_scale=2.0),
]


@pytest.mark.parametrize("model", MODELS, ids=["chip", "pcm", "chip-read"])
def test_one_array_derivative_equals_autodiff_of_the_model(model):
    assert model.elementwise and not hasattr(_Opaque(model), "elementwise")

    def loss(w, noise):
        return jnp.sum(jnp.sin(fj.program(w, KEY, g_max=25.0, noise=noise, t_inference=100.0)))

    fast = jax.jit(jax.grad(loss), static_argnums=1)(W, model)
    plain = jax.jit(jax.grad(loss), static_argnums=1)(W, _Opaque(model))
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
    assert np.abs(fast).max() > 0  # not a vacuous comparison


def test_derivatives_wrt_fields_g_max_and_time_still_flow():
    def loss(spread, g_max, t):
        model = FusionChipNoise.lenet5_readback(spread_scale=spread)
        return jnp.sum(fj.program(W, KEY, g_max=g_max, noise=model, t_inference=t) ** 2)

    def loss_opaque(spread, g_max, t):
        model = _Opaque(FusionChipNoise.lenet5_readback(spread_scale=spread))
        return jnp.sum(fj.program(W, KEY, g_max=g_max, noise=model, t_inference=t) ** 2)

    args = (jnp.float32(1.0), jnp.float32(25.0), jnp.float32(100.0))
    fast = jax.grad(loss, argnums=(0, 1, 2))(*args)
    plain = jax.grad(loss_opaque, argnums=(0, 1, 2))(*args)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4)
        assert a != 0


def test_exact_gradient_keeps_few_weight_sized_buffers():
    # Autodiff of the sample kept every intermediate (exp, log, erf_inv): 14x
    # the weights in XLA's temporaries on 1024x1024. The one-array derivative
    # keeps value and derivative of the sample, stacked.
    w = jnp.zeros((512, 512), jnp.float32) + 0.01
    grad = jax.grad(lambda w: jnp.sum(fj.program(w, KEY, g_max=25.0) ** 2))
    temp = jax.jit(grad).lower(w).compile().memory_analysis().temp_size_in_bytes
    assert temp <= 7 * w.nbytes
