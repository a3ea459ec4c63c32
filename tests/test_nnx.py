"""fusion_jax.nnx: FusionLinear / FusionConv against nnx.Linear / nnx.Conv and fj.program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from noise_doubles import AbsoluteNoise, OffsetNoise

import fusion_jax as fj
import fusion_jax.nnx as fnnx
from fusion_jax.model_programming import program_kernel

NOISE = AbsoluteNoise(1.0)
KEY0 = jax.random.key(0)  # for deterministic models, which ignore it
# Inputs from NumPy: an eager jax.random draw compiles once per shape.
X = jnp.asarray(np.random.default_rng(7).normal(size=(5, 3)).astype(np.float32))
XC = jnp.asarray(np.random.default_rng(8).normal(size=(2, 6, 6, 2)).astype(np.float32))


def linear(**kw):
    kw.setdefault("noise", NOISE)
    return fnnx.FusionLinear(3, 4, rngs=nnx.Rngs(params=0, noise=1), **kw)


def conv(**kw):
    kw.setdefault("noise", NOISE)
    return fnnx.FusionConv(2, 4, (3, 3), rngs=nnx.Rngs(params=0, noise=1), **kw)


def next_noise_key(layer):
    """The key the layer's noise stream hands out next, without advancing it."""
    return jax.random.split(jax.random.wrap_key_data(layer.noise_key[...]))[0]


def test_is_a_drop_in_linear_with_the_same_parameters():
    layer = fnnx.FusionLinear(
        3, 4, use_bias=False, param_dtype=jnp.float32, noise=NOISE, rngs=nnx.Rngs(params=0, noise=1)
    )
    plain = nnx.Linear(3, 4, use_bias=False, rngs=nnx.Rngs(params=0))
    assert isinstance(layer, nnx.Linear)
    assert layer.bias is None
    np.testing.assert_array_equal(layer.kernel[...], plain.kernel[...])
    assert set(nnx.state(layer, nnx.Param)) == set(nnx.state(plain, nnx.Param))


def test_training_output_is_program_of_transposed_kernel():
    """One chip row per output feature: with a deterministic per-device model the layer
    computes with program() of the transposed kernel."""
    layer = linear(g_max=20.0, noise=OffsetNoise(offset=4.0))
    kernel, bias = layer.kernel[...], layer.bias[...]
    w_chip = fj.program(kernel.T, KEY0, g_max=20.0, noise=OffsetNoise(offset=4.0)).T
    assert not np.allclose(w_chip, kernel)  # the model does something
    np.testing.assert_allclose(layer(X), X @ w_chip + bias, rtol=1e-5, atol=1e-6)


def test_training_output_uses_the_consumed_key():
    layer = linear(g_max=20.0)
    key = next_noise_key(layer)
    kernel, bias = layer.kernel[...], layer.bias[...]
    w_chip = program_kernel(kernel, key, g_max=20.0, noise=NOISE)
    assert not np.allclose(w_chip, kernel)  # the noise does something
    np.testing.assert_allclose(layer(X), X @ w_chip + bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.programmed_kernel(key), w_chip, rtol=1e-6, atol=1e-7)
    # A key passed at call time is used as is.
    np.testing.assert_allclose(layer(X, rngs=key), X @ w_chip + bias, rtol=1e-5, atol=1e-6)


def test_training_calls_draw_new_noise_and_eval_is_the_plain_layer():
    layer = linear()
    plain = nnx.Linear(3, 4, rngs=nnx.Rngs(params=0))
    y1, y2 = layer(X), layer(X)
    assert not np.allclose(y1, y2)
    layer.eval()
    assert layer.deterministic is True
    np.testing.assert_array_equal(layer(X), plain(X))
    np.testing.assert_array_equal(layer(X), layer(X))
    # A call-time flag overrides the mode both ways.
    assert not np.allclose(layer(X, deterministic=False), plain(X))
    layer.train()
    np.testing.assert_array_equal(layer(X, deterministic=True), plain(X))


def test_eval_and_view_reach_nested_layers():
    model = nnx.Sequential(
        linear(), nnx.relu, fnnx.FusionLinear(4, 2, noise=NOISE, rngs=nnx.Rngs(params=2, noise=3))
    )
    eval_view = nnx.view(model, deterministic=True)
    np.testing.assert_array_equal(eval_view(X), eval_view(X))
    assert not np.allclose(model(X), model(X))  # the original stays in training mode
    model.eval()
    np.testing.assert_array_equal(model(X), eval_view(X))


def test_noise_free_layers_equal_the_plain_layers():
    np.testing.assert_allclose(
        linear(noise=None)(X),
        nnx.Linear(3, 4, rngs=nnx.Rngs(params=0))(X),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        conv(noise=None, padding="CIRCULAR")(XC),
        nnx.Conv(2, 4, (3, 3), padding="CIRCULAR", rngs=nnx.Rngs(params=0))(XC),
        rtol=1e-5,
        atol=1e-5,
    )


def test_noise_free_layer_takes_no_noise_key():
    rngs = nnx.Rngs(0)
    fnnx.FusionLinear(3, 4, noise=None, rngs=rngs)
    after_fusion = rngs.default.count[...]
    nnx.Linear(3, 4, rngs=(plain_rngs := nnx.Rngs(0)))
    assert after_fusion == plain_rngs.default.count[...]


@pytest.mark.parametrize("gradient", ["exact", "ste"])
def test_gradients_flow(gradient):
    layer = linear(gradient=gradient)
    key = next_noise_key(layer)

    def loss(model):
        return jnp.sum(model(X) ** 2)

    grads = nnx.grad(loss)(layer)
    g = grads["kernel"][...]
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    if gradient == "ste":
        # Straight-through: the gradient of the plain layer at the programmed kernel.
        w_chip = layer.programmed_kernel(key)
        expected = jax.grad(lambda w: jnp.sum((X @ w + layer.bias[...]) ** 2))(w_chip)
        np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-5)


def test_exact_gradient_of_noise_free_layer_is_the_plain_gradient():
    layer = linear(noise=None)
    plain = nnx.Linear(3, 4, rngs=nnx.Rngs(params=0))
    g = nnx.grad(lambda m: jnp.sum(jnp.sin(m(X))))(layer)["kernel"][...]
    g_plain = nnx.grad(lambda m: jnp.sum(jnp.sin(m(X))))(plain)["kernel"][...]
    np.testing.assert_allclose(g, g_plain, rtol=1e-4, atol=1e-5)


def test_jit_matches_eager_and_advances_the_stream():
    layer = linear()
    eager = nnx.clone(layer)(X)
    step = nnx.jit(lambda m, x: m(x))
    first = step(layer, X)
    np.testing.assert_allclose(first, eager, rtol=1e-5, atol=1e-6)
    assert not np.allclose(step(layer, X), first)


def test_conv_programs_each_output_channel_with_its_own_scale():
    layer = conv()
    magnitudes = jnp.array([1e-3, 1.0, 30.0, 1e3])  # per output channel (last axis)
    base = jnp.asarray(np.random.default_rng(3).normal(size=(3, 3, 2, 4)).astype(np.float32))
    layer.kernel[...] = base * magnitudes
    keys = jax.random.split(jax.random.key(4), 16)
    programmed = jax.vmap(layer.programmed_kernel)(keys)
    err = (programmed - layer.kernel[...]).reshape(16, -1, 4)
    channel_max = jnp.max(jnp.abs(layer.kernel[...]).reshape(-1, 4), axis=0)
    rel = jnp.std(err, axis=(0, 1)) / channel_max
    # Each channel's noise is sigma / g_max of its own max, whatever its magnitude.
    np.testing.assert_allclose(rel, NOISE.sigma / layer.g_max, rtol=0.5)
    # With a deterministic per-device model: the same as programming the reference rows.
    det = OffsetNoise(offset=3.0)
    rows = fj.layout.kernel_to_rows(layer.kernel[...])
    expected = fj.layout.rows_to_kernel(fj.program(rows, KEY0, noise=det), (3, 3, 2, 4))
    got = program_kernel(layer.kernel[...], KEY0, noise=det)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_conv_degenerate_output_channel_is_the_row_the_reference_zeroes():
    layer = conv(noise=None, strict_aihwkit=True)
    kernel = jnp.asarray(np.random.default_rng(5).normal(size=(3, 3, 2, 4)).astype(np.float32))
    layer.kernel[...] = kernel.at[..., 2].set(0.3)  # output channel 2: one constant row
    programmed = layer.programmed_kernel()
    np.testing.assert_array_equal(programmed[..., 2], 0.0)
    np.testing.assert_allclose(
        np.delete(programmed, 2, -1), np.delete(layer.kernel[...], 2, -1), rtol=1e-5, atol=1e-6
    )
    # Without the strict switch nothing is lost.
    layer.strict_aihwkit = False
    np.testing.assert_allclose(layer.programmed_kernel(), layer.kernel[...], rtol=1e-5, atol=1e-6)


def test_conv_training_output_uses_the_programmed_kernel():
    layer = conv(padding="VALID")
    key = next_noise_key(layer)
    w_chip = program_kernel(layer.kernel[...], key, noise=NOISE)
    plain = nnx.Conv(2, 4, (3, 3), padding="VALID", rngs=nnx.Rngs(params=0))
    plain.kernel[...] = w_chip
    np.testing.assert_allclose(layer(XC), plain(XC), rtol=1e-5, atol=1e-5)


def test_masked_conv_programs_the_masked_kernel():
    mask = jnp.ones((3, 3, 2, 4)).at[0].set(0.0)
    layer = conv(mask=mask)
    programmed = layer.programmed_kernel(jax.random.key(0))
    np.testing.assert_array_equal(programmed[0], 0.0)
    plain = nnx.Conv(2, 4, (3, 3), mask=mask, rngs=nnx.Rngs(params=0))
    np.testing.assert_array_equal(layer(XC, deterministic=True), plain(XC))


def test_bad_settings_are_refused():
    with pytest.raises(fj.ArgumentError, match=r"^FusionLinear: .* 10 and 40\. Got g_max=50\.0\.$"):
        linear(g_max=50.0)
    with pytest.raises(ValueError, match="FusionLinear: gradient"):  # names the layer
        linear(gradient="straight")
    with pytest.raises(ValueError, match="deterministic"):
        linear(deterministic=None)(X)
    with pytest.raises(TypeError, match="rngs"):
        linear()(X, rngs="not a key")
    with pytest.raises(ValueError, match="'noise'"):
        fnnx.FusionLinear(3, 4, noise=NOISE, rngs=nnx.Rngs(params=0))


def test_default_noise_is_the_chip_model():
    pytest.importorskip("fusion_jax.noise")
    layer = fnnx.FusionLinear(3, 4, rngs=nnx.Rngs(params=0, noise=1))
    key = next_noise_key(layer)
    chip = fj.noise.FusionChipNoise.lenet5_readback()
    expected = X @ program_kernel(layer.kernel[...], key, noise=chip) + layer.bias[...]
    np.testing.assert_allclose(layer(X), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(layer(X), layer(X, deterministic=True))


def test_noise_model_of_numbers_is_static_and_one_with_arrays_is_state():
    from fusion_jax.noise import FusionChipNoise

    numbers = fnnx.FusionLinear(3, 4, rngs=nnx.Rngs(params=0, noise=1))
    assert "noise" not in nnx.state(numbers)  # compile-time constants of a jitted step
    arrays = fnnx.FusionLinear(
        3,
        4,
        noise=FusionChipNoise.lenet5_readback(spread_scale=jnp.float32(0.5)),
        rngs=nnx.Rngs(params=0, noise=1),
    )
    assert "noise" in nnx.state(arrays)  # traced, like the parameters
    x = jnp.ones((2, 3))
    assert arrays(x).shape == numbers(x).shape == (2, 4)


class _CNN(nnx.Module):
    """The NNX MNIST tutorial's CNN, small: ``conv`` and ``linear`` are the layer classes."""

    def __init__(self, conv=nnx.Conv, linear=nnx.Linear, *, rngs, **fusion):
        self.conv1 = conv(2, 3, kernel_size=(3, 3), rngs=rngs, **fusion)
        self.linear1 = linear(3 * 6 * 6, 3, rngs=rngs, **fusion)

    def __call__(self, x):
        x = nnx.relu(self.conv1(x))
        return self.linear1(x.reshape(x.shape[0], -1))


def fusion_cnn(rngs=None, **kw):
    kw.setdefault("noise", NOISE)
    rngs = nnx.Rngs(0) if rngs is None else rngs
    return _CNN(fnnx.FusionConv, fnnx.FusionLinear, rngs=rngs, **kw)


def test_single_stream_rngs_give_every_layer_the_plain_initial_values():
    fusion, plain = fusion_cnn(), _CNN(rngs=nnx.Rngs(0))
    jax.tree.map(
        np.testing.assert_array_equal, nnx.state(fusion, nnx.Param), nnx.state(plain, nnx.Param)
    )
    # ... and distinct noise streams: the two layers do not share a key.
    assert not np.array_equal(fusion.conv1.noise_key[...], fusion.linear1.noise_key[...])
    # A separate noise stream is advanced, as nnx.Dropout advances it; params are untouched.
    separate = fusion_cnn(nnx.Rngs(params=0, noise=1))
    jax.tree.map(
        np.testing.assert_array_equal, nnx.state(separate, nnx.Param), nnx.state(plain, nnx.Param)
    )
    assert not np.array_equal(separate.conv1.noise_key[...], separate.linear1.noise_key[...])


def test_state_serialises_with_flax_serialization_and_back():
    from flax import serialization

    model = fusion_cnn()
    pure = nnx.to_pure_dict(nnx.state(model))
    restored = serialization.msgpack_restore(serialization.to_bytes(pure))
    fresh = fusion_cnn(nnx.Rngs(5))
    state = nnx.state(fresh)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(fresh, state)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(fresh), nnx.state(model))
    # Same parameters and same noise stream: the next training call is the same.
    np.testing.assert_array_equal(fresh(XC), model(XC))


def test_checkpoint_guide_restore_then_train():
    """nnx.eval_shape, nnx.split, replace_by_pure_dict (orbax when installed), merge, train."""
    model = fusion_cnn()
    pure = nnx.to_pure_dict(nnx.state(model))
    try:
        import tempfile

        import orbax.checkpoint as ocp
    except ImportError:  # the same restore from the in-memory pure dict
        restored = pure
    else:
        with tempfile.TemporaryDirectory() as tmp:
            with ocp.StandardCheckpointer() as ckpt:
                ckpt.save(f"{tmp}/state", pure)
            with ocp.StandardCheckpointer() as ckpt:
                restored = ckpt.restore(f"{tmp}/state")
    abstract = nnx.eval_shape(lambda: fusion_cnn())
    graphdef, abstract_state = nnx.split(abstract)
    nnx.replace_by_pure_dict(abstract_state, restored)
    back = nnx.merge(graphdef, abstract_state)
    # A training call programs with the restored noise stream, as the original would.
    np.testing.assert_array_equal(back(XC), model(XC))
    # Restoring only the parameters leaves the noise stream abstract: a clear error.
    abstract_state = nnx.state(nnx.eval_shape(lambda: fusion_cnn()))
    nnx.replace_by_pure_dict(abstract_state, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    with pytest.raises(ValueError, match="noise_key"):
        nnx.merge(graphdef, abstract_state)(XC)


def test_parameters_merge_into_the_plain_graphdef_and_back():
    fusion, plain = fusion_cnn(nnx.Rngs(3)), _CNN(rngs=nnx.Rngs(4))
    plain_graphdef, plain_params = nnx.split(plain, nnx.Param)
    as_plain = nnx.merge(plain_graphdef, nnx.state(fusion, nnx.Param))
    fusion.eval()
    np.testing.assert_array_equal(as_plain(XC), fusion(XC))
    # The reverse: a digital model's parameters in the hardware-aware graphdef.
    graphdef, _, rest = nnx.split(fusion, nnx.Param, ...)
    as_fusion = nnx.merge(graphdef, plain_params, rest)
    np.testing.assert_array_equal(as_fusion(XC), plain(XC))  # eval: the digital weights
    as_fusion.train()
    assert not np.allclose(as_fusion(XC), plain(XC))
    # A digital checkpoint (a plain model's whole state) loads into a built model.
    nnx.update(fusion, nnx.state(plain))
    jax.tree.map(
        np.testing.assert_array_equal, nnx.state(fusion, nnx.Param), nnx.state(plain, nnx.Param)
    )


def test_mnist_tutorial_training_pattern():
    import optax

    model = fusion_cnn(gradient="ste")
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"))
    labels = jnp.array([0, 2])

    def loss_fn(model, x, y):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    @nnx.jit
    def train_step(model, optimizer, metrics, x, y):
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
        metrics.update(loss=loss)
        optimizer.update(model, grads)

    @nnx.jit
    def eval_step(model, x, y):
        return loss_fn(model, x, y)[0]

    model.train()
    kernel_before = np.array(model.linear1.kernel[...])
    key_before = np.asarray(model.linear1.noise_key[...])
    for _ in range(3):
        train_step(model, optimizer, metrics, XC, labels)
    assert np.isfinite(metrics.compute()["loss"])
    assert not np.allclose(model.linear1.kernel[...], kernel_before)
    assert not np.array_equal(model.linear1.noise_key[...], key_before)  # new noise each step
    model.eval()
    np.testing.assert_array_equal(eval_step(model, XC, labels), eval_step(model, XC, labels))


def test_traced_g_max_sweeps_under_vmap():
    det = OffsetNoise(offset=4.0)
    g_maxes = jnp.array([12.0, 25.0, 40.0])
    model = fusion_cnn(noise=det)

    def built_at(g_max):  # a model built with a traced g_max
        return fusion_cnn(noise=det, g_max=g_max)(XC)

    graphdef, state = nnx.split(model)

    def viewed_at(g_max):  # the same parameters and noise stream, read at another g_max
        return _at(nnx.merge(graphdef, state, copy=True), g_max)

    swept = jax.vmap(built_at)(g_maxes)
    np.testing.assert_allclose(swept[1], built_at(25.0), rtol=1e-5, atol=1e-5)  # as unbatched
    assert not np.allclose(swept[0], swept[2])  # g_max matters
    np.testing.assert_allclose(jax.vmap(viewed_at)(g_maxes), swept, rtol=1e-5, atol=1e-5)
    nnx_swept = nnx.vmap(_at, in_axes=(None, 0))(model, g_maxes)
    np.testing.assert_allclose(nnx_swept, swept, rtol=1e-5, atol=1e-5)
    with pytest.raises(fj.ArgumentError):
        fusion_cnn(noise=det, g_max=45.0)
    with pytest.raises(fj.ArgumentError, match=r"^FusionConv: .* Got g_max=5\.0\.$"):
        nnx.view(model, g_max=5.0)


def _at(model, g_max):
    """``model``'s training-mode output at ``g_max``, through ``nnx.view``."""
    view = nnx.view(model, g_max=g_max)
    return view(XC)


def test_fusionize_gives_each_layer_its_own_noise_stream():
    """Also from a single-stream nnx.Rngs(0): fusionize draws no parameters, so each
    converted layer must advance the stream rather than read it."""
    model = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    fused = fnnx.fusionize(model, noise=NOISE, rngs=nnx.Rngs(0))
    first, second = (np.asarray(layer.noise_key[...]) for layer in fused.layers)
    assert not np.array_equal(first, second)
    x = fused(X)
    assert x.shape == (5, 2) and not np.array_equal(fused.layers[0].noise_key[...], first)


def test_a_functional_step_advances_the_noise_stream_it_returns():
    """README, Functional steps: merged with copy=True inside jax.grad, the layer's new
    noise_key comes back as the auxiliary output; passed into the next step it draws new
    noise (the same state in gives the same draw)."""
    graphdef, params, rest = nnx.split(linear(noise=NOISE), nnx.Param, ...)

    def loss(params, rest):
        model = nnx.merge(graphdef, params, rest, copy=True)
        return jnp.sum(model(X) ** 2), nnx.state(model, nnx.Not(nnx.Param))

    step = jax.jit(jax.grad(loss, has_aux=True))
    grads, rest_1 = step(params, rest)
    again, _ = step(params, rest)
    grads_2, _ = step(params, rest_1)
    jax.tree.map(np.testing.assert_array_equal, grads, again)
    assert not np.allclose(grads["kernel"][...], grads_2["kernel"][...])
