"""The speed paths change no result: one-array derivative of the noise, compile counts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fusion_jax as fj
from fusion_jax.noise import FusionChipNoise, PCMLikeNoise

# NumPy draws: an eager jax.random draw is a compile per shape.
W = np.random.default_rng(0).normal(size=(6, 16)).astype(np.float32) * np.float32(0.1)
KEY = jax.random.key(3)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Opaque:
    """The same model, without ``elementwise``: program differentiates its code as is."""

    model: object

    def sample(self, conductances, key, *, g_max, t_inference):
        return self.model.sample(conductances, key, g_max=g_max, t_inference=t_inference)


def _numpy_kernel(key, shape, dtype=jnp.float32):
    """A layer's kernel init from NumPy: Flax's default is a compile per kernel shape."""
    return jnp.asarray(np.random.default_rng(len(shape)).normal(size=shape) * 0.3, dtype)


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

    @jax.jit  # one program for both routes
    def both(w):
        return jax.grad(loss)(w, model), jax.grad(loss)(w, _Opaque(model))

    fast, plain = both(W)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6)
    assert np.abs(fast).max() > 0  # not a vacuous comparison


def test_derivatives_wrt_fields_g_max_and_time_still_flow():
    def loss(spread, g_max, t):
        model = FusionChipNoise.lenet5_readback(spread_scale=spread)
        return jnp.sum(fj.program(W, KEY, g_max=g_max, noise=model, t_inference=t) ** 2)

    def loss_opaque(spread, g_max, t):
        model = _Opaque(FusionChipNoise.lenet5_readback(spread_scale=spread))
        return jnp.sum(fj.program(W, KEY, g_max=g_max, noise=model, t_inference=t) ** 2)

    @jax.jit  # one program for both routes
    def both(*args):
        grad = jax.grad(loss, argnums=(0, 1, 2))(*args)
        return grad, jax.grad(loss_opaque, argnums=(0, 1, 2))(*args)

    fast, plain = both(jnp.float32(1.0), jnp.float32(25.0), jnp.float32(100.0))
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4)
        assert a != 0


@pytest.mark.parametrize("noise", [None, FusionChipNoise.lenet5_readback()], ids=["free", "chip"])
def test_exact_gradient_keeps_three_weight_sized_buffers(noise):
    # Autodiff kept every intermediate (random words, exp, log, erf_inv, the
    # regression's normalised data): 14x the weights in XLA's temporaries.
    # The closed-form derivative keeps the read-back between the passes and
    # recomputes the noise's derivative: with the incoming cotangent, three
    # weight-sized arrays (noisy), one (noise-free), and per-line values.
    w = jnp.asarray(np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32))
    grad = jax.grad(lambda w: jnp.sum(fj.program(w, KEY, g_max=25.0, noise=noise) ** 2))
    temp = jax.jit(grad).lower(w).compile().memory_analysis().temp_size_in_bytes
    assert temp <= (3.05 if noise is not None else 1.05) * w.nbytes


def _lines_with_ties_and_degenerate_rows(shape, axis):
    """Random lines, a constant line, a zero line and a line whose maximum is reached twice."""
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32) * np.float32(0.1)
    lines = np.moveaxis(w, axis, -1)  # a view: lines along the last axis
    lines[..., 0, :] = 0.3
    lines[..., 1, :] = 0.0
    top = np.abs(lines[..., 2, :]).max(axis=-1)
    lines[..., 2, 3], lines[..., 2, 5] = -top, top
    return jnp.asarray(w)


CLOSED_FORM_CASES = [
    # (lines along axis, shape, input tiles, strict_aihwkit, noise)
    (-1, (2, 6, 40), (14, 13, 13), False, FusionChipNoise.lenet5_readback()),
    (-1, (2, 6, 40), None, True, None),
    (-2, (3, 40, 6), (20, 20), False, None),
    (-2, (3, 40, 6), (20, 20), True, MODELS[2]),
]


@pytest.mark.parametrize(("axis", "shape", "in_sizes", "strict", "noise"), CLOSED_FORM_CASES)
def test_closed_form_derivative_equals_autodiff(axis, shape, in_sizes, strict, noise):
    # The closed-form derivative against autodiff of the same computation, in
    # reverse and forward mode, on ties, constant and zero lines, tiles,
    # stacks of column matrices (Flax layout) and strict_aihwkit.
    from fusion_jax.programming import _program_autodiff, _program_core, _Statics

    w = _lines_with_ties_and_degenerate_rows(shape, axis)
    g_max, t = jnp.float32(25.0), jnp.float32(100.0)
    statics = _Statics(strict, axis, in_sizes)

    def closed_form(w):
        return _program_core(w, KEY, g_max, noise, t, strict, axis, in_sizes)

    def autodiff(w):
        return _program_autodiff(w, KEY, g_max, noise, t, statics)

    index = np.arange(w.size, dtype=np.float32).reshape(shape)
    weights, direction = np.sin(index * np.float32(0.7)), np.cos(index)

    @jax.jit  # one program for both routes and both modes
    def both(w):
        results = []
        for fn in (closed_form, autodiff):
            grad = jax.grad(lambda w, fn=fn: jnp.sum(weights * fn(w)))(w)
            value, tangent = jax.jvp(fn, (w,), (direction,))
            results.append((value, grad, tangent))
        return results

    (value, grad, tangent), (value_ad, grad_ad, tangent_ad) = both(w)
    np.testing.assert_allclose(value, value_ad, rtol=1e-5, atol=1e-7)
    scale = float(np.max(np.abs(grad_ad)))
    np.testing.assert_allclose(grad, grad_ad, rtol=0, atol=1e-5 * scale)
    scale_t = float(np.max(np.abs(tangent_ad)))
    np.testing.assert_allclose(tangent, tangent_ad, rtol=0, atol=1e-5 * scale_t)
    assert scale > 0 and scale_t > 0  # not a vacuous comparison


def test_new_g_max_t_inference_or_noise_field_values_do_not_recompile():
    from fusion_jax.programming import _program_jit

    w = jnp.asarray(np.ones((4, 8), np.float32) * np.arange(1.0, 9.0, dtype=np.float32))
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
    w = jnp.asarray(np.random.default_rng(5).normal(size=(8, 16)).astype(np.float32))
    literal = PCMLikeNoise(read_noise_scale=0.0)
    traced = jax.jit(lambda s: fj.program(w, KEY, noise=PCMLikeNoise(read_noise_scale=s)))
    off = fj.program(w, KEY, noise=PCMLikeNoise(read_noise=False, read_noise_scale=0.0))
    np.testing.assert_allclose(fj.program(w, KEY, noise=literal), traced(0.0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(traced(0.0), off, rtol=1e-6, atol=1e-7)
    assert not np.allclose(traced(1.0), off)


def test_program_params_compiles_one_program_per_kernel_and_none_for_new_settings():
    from flax import nnx

    from fusion_jax.model_programming import _program_kernels_jit, leaf_key

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 4, (3, 3), kernel_init=_numpy_kernel, rngs=rngs)
            self.dense = nnx.Linear(36, 5, kernel_init=_numpy_kernel, rngs=rngs)

    model = CNN(nnx.Rngs(0))
    jax.clear_caches()
    before = _program_kernels_jit._cache_size()
    first = fj.program_params(model, jax.random.key(0), g_max=25.0)
    assert _program_kernels_jit._cache_size() == before + 2  # one per kernel
    second = fj.program_params(model, jax.random.key(1), g_max=31.0, t_inference=60.0)
    assert _program_kernels_jit._cache_size() == before + 2  # new values: nothing compiled
    assert not np.allclose(first.dense.kernel[...], second.dense.kernel[...])
    # A kernel alone with its leaf key (as a layer programs its kernel): the same program.
    alone = fj.program_kernel(
        model.dense.kernel[...], leaf_key(jax.random.key(0), ("dense", "kernel")), g_max=25.0
    )
    assert _program_kernels_jit._cache_size() == before + 2
    np.testing.assert_array_equal(alone, first.dense.kernel[...])
    with pytest.raises(ValueError, match="NaN or Inf"):  # checked before the jit
        bad = {"kernel": jnp.full((3, 2), jnp.nan)}
        fj.program_params(bad, jax.random.key(0))


def test_layer_g_max_and_t_inference_as_step_arguments_do_not_recompile():
    from flax import nnx

    from fusion_jax.nnx import FusionLinear

    layer = FusionLinear(
        8, 4, g_max=40.0, kernel_init=_numpy_kernel, rngs=nnx.Rngs(params=0, noise=1)
    )
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


def test_closed_form_gradient_inside_vmap_of_scan_equals_autodiff():
    # A training loop vmapped over models (the transformer's recipes): the
    # gradient is taken inside lax.scan inside jax.vmap, over stacked kernels
    # programmed under two inner vmaps (program_params batches same-shaped
    # stacked kernels so), with a traced g_max. The stored per-line
    # cotangents stay branches at every level (an unbatched condition); a
    # batched one could not be transposed.
    def train(noise):
        def loss(w, key):
            g_max = jax.random.uniform(key, (), minval=10.0, maxval=40.0)
            one_kernel = lambda w: fj.program(w, KEY, g_max=g_max, noise=noise)  # noqa: E731
            out = jax.vmap(jax.vmap(one_kernel))(w)
            return jnp.sum(jnp.sin(out))

        def one(w, key):
            def step(w, i):
                value, grad = jax.value_and_grad(loss)(w, jax.random.fold_in(key, i))
                return w - 0.1 * grad, value

            return jax.lax.scan(step, w, jnp.arange(2))

        return jax.vmap(one)

    w = np.stack([W.reshape(2, 1, 3, 16), -W.reshape(2, 1, 3, 16)])
    keys = jax.random.split(jax.random.key(1), 2)
    model = FusionChipNoise.lenet5_readback()
    both = jax.jit(lambda w, keys: (train(model)(w, keys), train(_Opaque(model))(w, keys)))
    (w_fast, loss_fast), (w_plain, loss_plain) = both(w, keys)
    np.testing.assert_allclose(loss_fast, loss_plain, rtol=1e-5)
    np.testing.assert_allclose(w_fast, w_plain, rtol=1e-4, atol=1e-6)
    assert not np.allclose(w_fast, w)  # the steps moved the weights


def test_second_derivatives_of_the_closed_form_equal_autodiff():
    # jax.hessian (forward over reverse) differentiates the closed form's own
    # rule: every per-line value it uses must itself be differentiable.
    from fusion_jax.programming import _program_autodiff, _program_core, _Statics

    w = W[:3, :5]
    model = FusionChipNoise.lenet5_readback()
    g_max, t = jnp.float32(25.0), jnp.float32(100.0)

    def closed_form(w):
        return jnp.sum(jnp.sin(_program_core(w, KEY, g_max, model, t, False, -1, None)))

    def autodiff(w):
        statics = _Statics(False, -1, None)
        return jnp.sum(jnp.sin(_program_autodiff(w, KEY, g_max, model, t, statics)))

    fast, plain = jax.jit(lambda w: (jax.hessian(closed_form)(w), jax.hessian(autodiff)(w)))(w)
    scale = float(np.max(np.abs(plain)))
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-5 * scale)
    assert scale > 0
