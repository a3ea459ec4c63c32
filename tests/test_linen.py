"""fusion_jax.linen: FusionDense / FusionConv against nn.Dense / nn.Conv and fj.program."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from noise_doubles import AbsoluteNoise, OffsetNoise

import fusion_jax as fj
import fusion_jax.linen as flinen
from fusion_jax.model_programming import program_kernel

NOISE = AbsoluteNoise(1.0)
# Inputs from NumPy: an eager jax.random draw compiles once per shape.
X = jnp.asarray(np.random.default_rng(7).normal(size=(5, 3)).astype(np.float32))
XC = jnp.asarray(np.random.default_rng(8).normal(size=(2, 6, 6, 2)).astype(np.float32))
K0, K1, K2 = jax.random.split(jax.random.key(0), 3)


def dense_and_vars(**kw):
    kw.setdefault("noise", NOISE)
    layer = flinen.FusionDense(4, **kw)
    return layer, layer.init(K0, X)


def test_init_gives_the_plain_parameters_without_a_noise_key():
    layer, variables = dense_and_vars()
    assert isinstance(layer, nn.Dense)
    plain = nn.Dense(4).init(K0, X)
    jax.tree.map(np.testing.assert_array_equal, variables, plain)
    conv_vars = flinen.FusionConv(4, (3, 3), noise=NOISE).init(K0, XC)
    jax.tree.map(np.testing.assert_array_equal, conv_vars, nn.Conv(4, (3, 3)).init(K0, XC))


def test_training_output_is_program_of_transposed_kernel():
    """One chip row per output feature (deterministic per-device model), and the key
    given is the key used (random model)."""
    det = OffsetNoise(offset=4.0)
    layer, variables = dense_and_vars(g_max=20.0, noise=det)
    p = variables["params"]
    w_det = fj.program(p["kernel"].T, K1, g_max=20.0, noise=det).T
    assert not np.allclose(w_det, p["kernel"])
    y = layer.apply(variables, X, rng=K1)
    np.testing.assert_allclose(y, X @ w_det + p["bias"], rtol=1e-5, atol=1e-6)
    layer, variables = dense_and_vars(g_max=20.0)
    p = variables["params"]
    w_chip = program_kernel(p["kernel"], K1, g_max=20.0, noise=NOISE)
    assert not np.allclose(w_chip, p["kernel"])
    y = layer.apply(variables, X, rng=K1)
    np.testing.assert_allclose(y, X @ w_chip + p["bias"], rtol=1e-5, atol=1e-6)


def test_noise_keys_come_from_the_rng_collection():
    layer, variables = dense_and_vars(rng_collection="chip")
    y1 = layer.apply(variables, X, rngs={"chip": K1})
    np.testing.assert_array_equal(y1, layer.apply(variables, X, rngs={"chip": K1}))
    assert not np.allclose(y1, layer.apply(variables, X, rngs={"chip": K2}))
    with pytest.raises(Exception, match="chip"):
        layer.apply(variables, X, rngs={"noise": K1})


def test_deterministic_attribute_and_call_override():
    layer, variables = dense_and_vars()
    plain = nn.Dense(4).apply(variables, X)
    np.testing.assert_array_equal(layer.apply(variables, X, deterministic=True), plain)
    eval_layer = flinen.FusionDense(4, noise=NOISE, deterministic=True)
    np.testing.assert_array_equal(eval_layer.apply(variables, X), plain)
    trained = eval_layer.apply(variables, X, deterministic=False, rngs={"noise": K1})
    assert not np.allclose(trained, plain)
    with pytest.raises(ValueError, match="deterministic"):
        flinen.FusionDense(4, noise=NOISE, deterministic=None).apply(variables, X)


def test_noise_free_layers_equal_the_plain_layers():
    layer, variables = dense_and_vars(noise=None)
    np.testing.assert_allclose(
        layer.apply(variables, X), nn.Dense(4).apply(variables, X), rtol=1e-5, atol=1e-6
    )
    conv = flinen.FusionConv(4, (3, 3), noise=None, padding="CIRCULAR", use_bias=False)
    conv_vars = conv.init(K0, XC)
    np.testing.assert_allclose(
        conv.apply(conv_vars, XC),
        nn.Conv(4, (3, 3), padding="CIRCULAR", use_bias=False).apply(conv_vars, XC),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("gradient", ["exact", "ste"])
def test_gradients_flow(gradient):
    layer, variables = dense_and_vars(gradient=gradient)

    def loss(params):
        return jnp.sum(layer.apply({"params": params}, X, rng=K1) ** 2)

    g = jax.grad(loss)(variables["params"])["kernel"]
    assert np.all(np.isfinite(g)) and np.any(g != 0)
    if gradient == "ste":
        p = variables["params"]
        w_chip = program_kernel(p["kernel"], K1, noise=NOISE)
        expected = jax.grad(lambda w: jnp.sum((X @ w + p["bias"]) ** 2))(w_chip)
        np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-5)


def test_jit_in_a_model():
    net = fusion_net()  # the file's model (its layers are compiled for the other tests too)
    variables = net.init(K0, XC, True)
    apply = jax.jit(net.apply, static_argnums=2)
    y1 = apply(variables, XC, True, rngs={"noise": K1})
    np.testing.assert_allclose(
        y1, net.apply(variables, XC, True, rngs={"noise": K1}), rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(y1, apply(variables, XC, True, rngs={"noise": K2}))
    np.testing.assert_array_equal(apply(variables, XC, False), apply(variables, XC, False))


def test_conv_degenerate_output_channel_is_the_row_the_reference_zeroes():
    conv = flinen.FusionConv(4, (3, 3), noise=None, strict_aihwkit=True, padding="VALID")
    kernel = np.random.default_rng(2).normal(size=(3, 3, 2, 4)).astype(np.float32)
    kernel[..., 1] = -0.7
    variables = {"params": {"kernel": kernel, "bias": jnp.zeros(4)}}
    y = conv.apply(variables, XC)
    plain = nn.Conv(4, (3, 3), padding="VALID").apply(variables, XC)
    np.testing.assert_array_equal(y[..., 1], 0.0)  # channel 1 is one constant chip row
    np.testing.assert_allclose(np.delete(y, 1, -1), np.delete(plain, 1, -1), rtol=1e-5, atol=1e-5)


def test_bad_settings_are_refused():
    _, variables = dense_and_vars()
    with pytest.raises(fj.ArgumentError, match=r"^FusionDense: .* Got g_max=5\.0\.\n"):
        flinen.FusionDense(4, noise=NOISE, g_max=5.0).apply(variables, X, rng=K1)
    with pytest.raises(ValueError, match="FusionDense: gradient"):  # names the layer
        flinen.FusionDense(4, noise=NOISE, gradient="nope").apply(variables, X, rng=K1)
    with pytest.raises(ValueError, match="feature_group_count"):
        flinen.FusionConv(4, (3, 3), feature_group_count=3, noise=None).init(K0, XC)
    # Whole-model settings are refused where they are given, naming the function.
    with pytest.raises(ValueError, match=r"^fusionize: t_inference"):
        flinen.fusionize(nn.Dense(4), t_inference=-1.0)
    with pytest.raises(fj.ArgumentError, match=r"^fusion_interceptor: .* Got g_max=50\.0\.$"):
        with flinen.fusion_interceptor(g_max=50.0):
            pass
    dot = flinen.FusionDotGeneral(gradient="nope", deterministic=False)
    with pytest.raises(ValueError, match=r"^FusionDotGeneral: gradient"):
        dot.apply({}, X, jnp.ones((3, 4)), (((1,), (0,)), ((), ())), rngs={"noise": K1})


def test_default_noise_is_the_chip_model():
    pytest.importorskip("fusion_jax.noise")
    layer = flinen.FusionDense(4)
    variables = layer.init(K0, X)
    p = variables["params"]
    chip = fj.noise.FusionChipNoise.lenet5_readback()
    expected = X @ program_kernel(p["kernel"], K1, noise=chip) + p["bias"]
    np.testing.assert_allclose(layer.apply(variables, X, rng=K1), expected, rtol=1e-5, atol=1e-6)


class _Net(nn.Module):
    """A small CNN built from ``conv`` and ``dense`` classes, unnamed as in Flax's examples."""

    conv: type = nn.Conv
    dense: type = nn.Dense
    layer_kw: dict | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        kw = dict(self.layer_kw or {})
        if kw:
            kw["deterministic"] = not train
        x = nn.relu(self.conv(3, (3, 3), **kw)(x))
        x = nn.relu(nn.Conv(2, (1, 1))(x))  # a plain layer between: counted together
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(self.dense(5, **kw)(x))
        return self.dense(2, **kw)(x)


def fusion_net(**kw):
    return _Net(flinen.FusionConv, flinen.FusionDense, {"noise": NOISE, **kw})


def test_names_and_initial_values_are_those_of_the_plain_layers():
    plain = _Net().init(K0, XC)
    fusion = fusion_net().init(K0, XC)
    assert set(fusion["params"]) == {"Conv_0", "Conv_1", "Dense_0", "Dense_1"}
    assert jax.tree.structure(fusion) == jax.tree.structure(plain)
    jax.tree.map(np.testing.assert_array_equal, fusion, plain)
    assert type(flinen.FusionDense(2)).__qualname__ == "FusionDense"  # Python name unchanged


def test_a_digital_checkpoint_loads_into_the_fusion_model_and_back():
    from flax import serialization

    plain_vars = _Net().init(K1, XC)
    fusion = fusion_net()
    template = fusion.init(K0, XC)
    loaded = serialization.from_bytes(template, serialization.to_bytes(plain_vars))
    jax.tree.map(np.testing.assert_array_equal, loaded, plain_vars)
    # Evaluation mode is the digital model; training mode programs the loaded kernels.
    np.testing.assert_array_equal(fusion.apply(loaded, XC), _Net().apply(plain_vars, XC))
    trained = fusion.apply(loaded, XC, True, rngs={"noise": K2})
    assert np.all(np.isfinite(trained)) and not np.allclose(trained, _Net().apply(plain_vars, XC))
    # And back: a hardware-aware model's variables apply to the plain model.
    fusion_vars = fusion.init(K2, XC)
    np.testing.assert_array_equal(
        _Net().apply(fusion_vars, XC), fusion.apply(fusion_vars, XC, False)
    )


def test_traced_g_max_sweeps_under_vmap():
    det = OffsetNoise(offset=4.0)
    variables = fusion_net(noise=det).init(K0, XC)
    g_maxes = jnp.array([12.0, 25.0, 40.0])

    def at(g_max):
        return fusion_net(noise=det, g_max=g_max).apply(variables, XC, True, rngs={"noise": K1})

    swept = jax.jit(jax.vmap(at))(g_maxes)  # one compile, not one per op
    for i, g in enumerate([12.0, 25.0, 40.0]):
        np.testing.assert_allclose(swept[i], at(g), rtol=1e-5, atol=1e-5)
    assert not np.allclose(swept[0], swept[2])  # g_max matters
    with pytest.raises(fj.ArgumentError, match="g_max"):
        at(45.0)


def test_masked_conv_programs_the_masked_kernel():
    mask = jnp.ones((3, 3, 2, 4)).at[0].set(0.0)
    conv = flinen.FusionConv(4, (3, 3), mask=mask, noise=NOISE, padding="VALID")
    variables = conv.init(K0, XC)
    kernel = variables["params"]["kernel"].at[0].multiply(50.0)  # masked-out weights dominate
    variables = {"params": {**variables["params"], "kernel": kernel}}
    # The masked weights are not programmed and do not set the channels' scale.
    w_chip = program_kernel(kernel * mask, K1, noise=NOISE)
    assert not np.allclose(w_chip, program_kernel(kernel, K1, noise=NOISE) * mask)
    plain = nn.Conv(4, (3, 3), padding="VALID")
    expected = plain.apply(
        {"params": {"kernel": w_chip * mask, "bias": variables["params"]["bias"]}}, XC
    )
    np.testing.assert_allclose(conv.apply(variables, XC, rng=K1), expected, rtol=1e-5, atol=1e-5)


def test_general_and_einsum_layers_take_the_plain_names_and_initial_values():
    class Plain(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.DenseGeneral((2, 3))(x)
            return nn.Einsum((3, 4), "bij,jk->bik")(x)

    class Fusion(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = flinen.FusionDenseGeneral((2, 3), deterministic=True)(x)
            return flinen.FusionEinsum((3, 4), "bij,jk->bik", deterministic=True)(x)

    x = jnp.ones((1, 5))
    plain, fusion = Plain().init(K0, x), Fusion().init(K0, x)
    assert set(fusion["params"]) == {"DenseGeneral_0", "Einsum_0"}
    jax.tree.map(np.testing.assert_array_equal, fusion, plain)
