"""fusion_jax.nnx with noise_stream=False: no RNG state, so the whole state is the plain model's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from noise_doubles import AbsoluteNoise

import fusion_jax.nnx as fnnx
from fusion_jax.model_programming import module_kernel_axes, program_kernel

NOISE = AbsoluteNoise(1.0)
G_MAX = 20.0
# Inputs from NumPy: an eager jax.random draw compiles once per shape.
XC = jnp.asarray(np.random.default_rng(8).normal(size=(2, 6, 6, 2)).astype(np.float32))
LABELS = jnp.array([0, 3])
LAYERS = ("conv", "linear", "mix", "general")


class _Net(nnx.Module):
    """One layer of each kind; ``fusion`` builds the Fusion layers with those settings."""

    def __init__(self, rngs, fusion=None):
        def make(plain, aware):
            return plain if fusion is None else functools.partial(aware, **fusion)

        self.conv = make(nnx.Conv, fnnx.FusionConv)(2, 3, (3, 3), padding="VALID", rngs=rngs)
        self.linear = make(nnx.Linear, fnnx.FusionLinear)(3 * 4 * 4, 4, rngs=rngs)
        self.mix = make(nnx.Einsum, fnnx.FusionEinsum)("bd,dk->bk", (4, 4), (4,), rngs=rngs)
        self.general = make(nnx.LinearGeneral, fnnx.FusionLinearGeneral)(4, (2, 2), rngs=rngs)

    def __call__(self, x, rngs=None):
        """``rngs``: one key, split into one per layer (a Fusion model's training call)."""
        keys = [{}] * 4 if rngs is None else [{"rngs": k} for k in jax.random.split(rngs, 4)]
        x = nnx.relu(self.conv(x, **keys[0]))
        x = nnx.relu(self.linear(x.reshape(x.shape[0], -1), **keys[1]))
        x = nnx.relu(self.mix(x, **keys[2]))
        return self.general(x, **keys[3]).reshape(x.shape[0], -1)


def aware_net(rngs, **kw):
    settings = {"noise": NOISE, "g_max": G_MAX, "noise_stream": False, **kw}
    return _Net(rngs, fusion=settings)


def assert_same_state(a, b):
    assert jax.tree.structure(nnx.state(a)) == jax.tree.structure(nnx.state(b))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(a), nnx.state(b))


def test_state_is_the_plain_state_and_takes_nothing_from_rngs():
    """Same tree, same leaves, same values for nnx.Rngs(0); the stream is advanced as by
    the plain model (the Fusion layers draw nothing for noise)."""
    rngs, plain_rngs = nnx.Rngs(0), nnx.Rngs(0)
    aware, plain = aware_net(rngs), _Net(plain_rngs)
    assert_same_state(aware, plain)
    assert all(getattr(aware, name).noise_key is None for name in LAYERS)
    np.testing.assert_array_equal(rngs.default.count[...], plain_rngs.default.count[...])
    # No noise stream needed in rngs: parameters only.
    assert_same_state(aware_net(nnx.Rngs(params=1)), _Net(nnx.Rngs(params=1)))
    # The default (noise_stream=True) adds a noise_key leaf per layer: a different tree.
    with_stream = aware_net(nnx.Rngs(0), noise_stream=True)
    assert jax.tree.structure(nnx.state(with_stream)) != jax.tree.structure(nnx.state(plain))


def test_whole_state_merges_into_the_plain_graphdef_and_back():
    aware, plain = aware_net(nnx.Rngs(3)), _Net(nnx.Rngs(4))  # different values
    key = jax.random.key(11)
    # Fusion state -> plain graphdef: the plain model with the Fusion model's weights.
    plain_graphdef, plain_state = nnx.split(plain)
    as_plain = nnx.merge(plain_graphdef, nnx.state(aware))
    assert isinstance(as_plain.linear, nnx.Linear) and not isinstance(
        as_plain.linear, fnnx.FusionLinear
    )
    np.testing.assert_array_equal(as_plain(XC), nnx.view(aware, deterministic=True)(XC))
    assert not np.allclose(as_plain(XC), plain(XC))
    # Plain state -> Fusion graphdef: eval is the plain model, training programs its kernels.
    aware_graphdef, _ = nnx.split(aware)
    as_aware = nnx.merge(aware_graphdef, plain_state)
    assert isinstance(as_aware.linear, fnnx.FusionLinear)
    np.testing.assert_array_equal(nnx.view(as_aware, deterministic=True)(XC), plain(XC))
    for name in LAYERS:
        layer, plain_layer = getattr(as_aware, name), getattr(plain, name)
        kernel = plain_layer.kernel[...]
        axes = module_kernel_axes(plain_layer, kernel.shape, name)
        expected = program_kernel(kernel, key, axes=axes, g_max=G_MAX, noise=NOISE)
        assert not np.allclose(expected, kernel)  # the noise does something
        np.testing.assert_allclose(layer.programmed_kernel(key), expected, rtol=1e-6, atol=1e-6)
    # The Linear layer's training call computes with that kernel, from the call's key.
    flat = jnp.asarray(np.random.default_rng(9).normal(size=(2, 48)).astype(np.float32))
    w_chip = program_kernel(plain.linear.kernel[...], key, g_max=G_MAX, noise=NOISE)
    np.testing.assert_allclose(
        as_aware.linear(flat, rngs=key),
        flat @ w_chip + plain.linear.bias[...],
        rtol=1e-5,
        atol=1e-5,
    )
    # ... and merging back gives the plain state unchanged (the call kept no RNG state).
    assert_same_state(nnx.merge(plain_graphdef, nnx.state(as_aware)), plain)


def test_noise_free_whole_state_merges_give_the_plain_outputs():
    aware, plain = aware_net(nnx.Rngs(5), noise=None), _Net(nnx.Rngs(6))
    as_plain = nnx.merge(nnx.graphdef(plain), nnx.state(aware))
    np.testing.assert_allclose(aware(XC), as_plain(XC), rtol=1e-5, atol=1e-5)  # training mode
    as_aware = nnx.merge(nnx.graphdef(aware), nnx.state(plain))
    np.testing.assert_allclose(as_aware(XC), plain(XC), rtol=1e-5, atol=1e-5)


def test_plain_checkpoint_restores_into_the_abstract_fusion_model_and_trains():
    """The checkpointing guide's restore, from a digital model's whole state."""
    plain = _Net(nnx.Rngs(2))
    pure = nnx.to_pure_dict(nnx.state(plain))
    graphdef, abstract_state = nnx.split(nnx.eval_shape(lambda: aware_net(nnx.Rngs(0))))
    nnx.replace_by_pure_dict(abstract_state, pure)
    restored = nnx.merge(graphdef, abstract_state)
    key = jax.random.key(4)
    out = restored(XC, rngs=key)
    assert np.all(np.isfinite(out)) and not np.allclose(out, plain(XC))
    np.testing.assert_array_equal(nnx.view(restored, deterministic=True)(XC), plain(XC))


def test_jitted_training_step_with_call_time_keys():
    """split/merge + jax.jit + optax over the whole state, a new key per step."""
    model = aware_net(nnx.Rngs(0), gradient="ste")
    graphdef, state = nnx.split(model)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(state)

    def loss_fn(state, key):
        logits = nnx.merge(graphdef, state)(XC, rngs=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()

    @jax.jit
    def train_step(state, opt_state, key):
        loss, grads = jax.value_and_grad(loss_fn)(state, key)
        updates, opt_state = optimizer.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state, loss

    batched = jax.jit(jax.vmap(loss_fn, in_axes=(None, 0)))
    keys = jax.random.split(jax.random.key(1), 3)
    losses = batched(state, keys)
    assert len(set(np.asarray(losses).tolist())) == 3  # a different draw per key
    np.testing.assert_array_equal(batched(state, keys), losses)  # the same for the same key
    start = state
    for step in range(3):
        state, opt_state, loss = train_step(state, opt_state, jax.random.key(10 + step))
        assert np.isfinite(loss)
    assert not np.allclose(state["linear"]["kernel"][...], start["linear"]["kernel"][...])
    # Still the plain model's state: it loads into the plain graphdef.
    trained_plain = nnx.merge(nnx.graphdef(_Net(nnx.Rngs(0))), state)
    np.testing.assert_array_equal(
        trained_plain(XC), nnx.view(nnx.merge(graphdef, state), deterministic=True)(XC)
    )


def test_nnx_jit_training_step_with_an_rngs_argument():
    """nnx.jit + nnx.Optimizer; the keys come from an nnx.Rngs passed to the step."""
    model = aware_net(nnx.Rngs(0), gradient="ste")
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, rngs):
        key = rngs.noise()  # drawn outside the gradient's trace

        def loss_fn(model):
            logits = model(XC, rngs=key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, LABELS).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rngs = nnx.Rngs(noise=7)
    kernel = np.array(model.linear.kernel[...])
    for _ in range(2):
        assert np.isfinite(train_step(model, optimizer, rngs))
    assert rngs.noise.count[...] == 2  # one key per step, from the argument
    assert not np.allclose(model.linear.kernel[...], kernel)
    assert all(getattr(model, name).noise_key is None for name in LAYERS)


def test_training_call_without_a_key_is_an_error_naming_the_layer():
    layer = fnnx.FusionLinear(3, 4, noise=NOISE, noise_stream=False, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="FusionLinear.*noise_stream=False.*rngs="):
        layer(x)
    with pytest.raises(ValueError, match="FusionConv.*noise_stream=False"):
        aware_net(nnx.Rngs(0))(XC)
    # Each accepted key form works: a key, an nnx.Rngs, an nnx.RngStream.
    key = jax.random.key(3)
    from_key = layer(x, rngs=key)
    assert not np.allclose(from_key, layer(x, deterministic=True))
    np.testing.assert_array_equal(layer(x, rngs=nnx.Rngs(noise=3)), layer(x, rngs=nnx.Rngs(3)))
    np.testing.assert_array_equal(
        layer(x, rngs=nnx.Rngs(noise=3).noise), layer(x, rngs=nnx.Rngs(noise=3))
    )
    # Evaluation mode and noise-free layers need no key.
    np.testing.assert_array_equal(
        layer(x, deterministic=True), x @ layer.kernel[...] + layer.bias[...]
    )
    free = fnnx.FusionLinear(3, 4, noise=None, noise_stream=False, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(free(x), nnx.Linear(3, 4, rngs=nnx.Rngs(0))(x), rtol=1e-5)
    with pytest.raises(TypeError, match="noise_stream"):
        fnnx.FusionLinear(3, 4, noise_stream="no", rngs=nnx.Rngs(0))


class _Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x, rngs=None):
        return nnx.relu(self.linear(x) if rngs is None else self.linear(x, rngs=rngs))


class _Stacked(nnx.Module):
    """Three blocks made by nnx.vmap and applied by nnx.scan, one key per block."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=0, out_axes=0)
        def blocks(rngs):
            return _Block(rngs)

        self.blocks = blocks(rngs)

    def __call__(self, x, keys=None):
        if keys is None:
            run = nnx.scan(lambda x, block: block(x), in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            return run(x, self.blocks)
        run = nnx.scan(
            lambda x, block, key: block(x, key), in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry
        )
        return run(x, self.blocks, keys)


def test_fusionize_stacked_layers_keep_no_rng_state_and_scan_with_keys():
    plain = _Stacked(nnx.Rngs(0))
    aware = fnnx.fusionize(plain, g_max=G_MAX, noise=NOISE, noise_stream=False)
    assert isinstance(aware.blocks.linear, fnnx.FusionLinear)
    assert aware.blocks.linear.noise_key is None
    assert_same_state(aware, plain)
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 4)).astype(np.float32))
    keys = jax.random.split(jax.random.key(12), 3)
    out = aware(x, keys)
    # Each block programs its own kernel slice with its own key.
    kernels, biases = plain.blocks.linear.kernel[...], plain.blocks.linear.bias[...]
    expected = x
    for i in range(3):
        w_chip = program_kernel(kernels[i], keys[i], g_max=G_MAX, noise=NOISE)
        expected = jax.nn.relu(expected @ w_chip + biases[i])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, plain(x))
    with pytest.raises(ValueError, match="noise_stream=False"):
        aware(x)
    # The whole state merges both ways, also stacked.
    np.testing.assert_allclose(
        nnx.merge(nnx.graphdef(aware), nnx.state(plain))(x, keys), expected, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(nnx.merge(nnx.graphdef(plain), nnx.state(aware))(x), plain(x))
