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
    FusionChipNoise.lenet5_readback(read_noise=True, read_noise_scale=2.0),
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


def test_new_g_max_t_inference_or_noise_field_values_do_not_recompile():
    from fusion_jax.programming import _program_jit

    w = jnp.ones((4, 8), jnp.float32) * jnp.arange(1.0, 9.0)
    fj.program(w, KEY, g_max=25.0, t_inference=0.0)
    before = _program_jit._cache_size()
    for g_max, t, spread in ((10.0, 1.0, 0.5), (40.0, 3600.0, 2.0), (17.5, 1e7, 0.0)):
        model = FusionChipNoise.lenet5_readback(spread_scale=spread)
        fj.program(w, KEY, g_max=g_max, t_inference=t, noise=model)
    assert _program_jit._cache_size() == before
    # the read-noise switch is structure: turning it on is one new program
    fj.program(w, KEY, noise=FusionChipNoise.lenet5_readback(read_noise=True))
    assert _program_jit._cache_size() == before + 1


def test_literal_and_traced_zero_read_noise_give_the_same_programming():
    w = jax.random.normal(jax.random.key(5), (8, 16))
    literal = PCMLikeNoise(read_noise_scale=0.0)
    traced = jax.jit(lambda s: fj.program(w, KEY, noise=PCMLikeNoise(read_noise_scale=s)))
    off = fj.program(w, KEY, noise=PCMLikeNoise(read_noise=False, read_noise_scale=0.0))
    np.testing.assert_allclose(fj.program(w, KEY, noise=literal), traced(0.0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(traced(0.0), off, rtol=1e-6, atol=1e-7)
    assert not np.allclose(traced(1.0), off)


def test_program_params_compiles_one_program_per_kernel_and_none_for_new_settings():
    from flax import nnx

    from fusion_jax.model_programming import _program_kernel_jit

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
            self.dense = nnx.Linear(36, 5, rngs=rngs)

    model = CNN(nnx.Rngs(0))
    jax.clear_caches()
    before = _program_kernel_jit._cache_size()
    first = fj.program_params(model, jax.random.key(0), g_max=25.0)
    assert _program_kernel_jit._cache_size() == before + 2  # one per kernel
    second = fj.program_params(model, jax.random.key(1), g_max=31.0, t_inference=60.0)
    assert _program_kernel_jit._cache_size() == before + 2  # new values: nothing compiled
    assert not np.allclose(first.dense.kernel[...], second.dense.kernel[...])
    with pytest.raises(ValueError, match="NaN or Inf"):  # checked before the jit
        bad = {"kernel": jnp.full((3, 2), jnp.nan)}
        fj.program_params(bad, jax.random.key(0))


def test_layer_g_max_and_t_inference_as_step_arguments_do_not_recompile():
    from flax import nnx

    from fusion_jax.nnx import FusionLinear

    layer = FusionLinear(8, 4, g_max=40.0, rngs=nnx.Rngs(params=0, noise=1))
    graphdef, state = nnx.split(layer)
    x = jnp.ones((2, 8))

    @jax.jit
    def forward(state, g_max, t):
        viewed = nnx.view(nnx.merge(graphdef, state), g_max=g_max, t_inference=t)
        return viewed(x, rngs=KEY)

    outs = [forward(state, g, t) for g, t in ((40.0, 0.0), (12.0, 3600.0), (25.0, 1e6))]
    assert forward._cache_size() == 1
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])
    expected = x @ fj.program_kernel(layer.kernel[...], KEY, g_max=12.0, t_inference=3600.0)
    np.testing.assert_allclose(outs[1], expected + layer.bias[...], rtol=1e-5, atol=1e-6)
