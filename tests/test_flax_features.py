"""Flax features real models use, with Fusion layers: remat, Linen vmap, the NNX/Linen
bridge, BatchNorm in a residual block, convolution options, NNX containers, tied embeddings.

Each test compares against an independent computation: the plain Flax model with the
kernels as :func:`fusion_jax.program_params` programs them (``OffsetNoise``: deterministic
per device, so the key does not matter, yet every row's result depends on that row's own
scale), :func:`fusion_jax.program_kernel` of one kernel, or the same computation without
the feature (exact gradients).
"""

import functools
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import assert_only_row_scaled, normal
from flax import nnx
from flax.nnx import bridge
from noise_doubles import AbsoluteNoise, OffsetNoise

import fusion_jax as fj
from fusion_jax.layout import KernelAxes
from fusion_jax.model_programming import leaf_key, program_kernel, program_params

KEY = jax.random.key(7)
C = 4  # channels / features everywhere: few shapes, few compiles
RANDOM = AbsoluteNoise(1.0)


X = normal((3, C), 1)  # dense inputs
XC = normal((2, 6, 6, C), 2)  # 2-D convolution inputs


def close(a, b, rtol=1e-4, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


# --- 1. nnx.remat ------------------------------------------------------------------------------


class MLPBlock(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(C, C, rngs=rngs)
        self.l2 = nnx.Linear(C, C, rngs=rngs)

    def __call__(self, x):
        return x + self.l2(jnp.tanh(self.l1(x)))


class Deep(nnx.Module):
    def __init__(self, rngs):
        self.b1 = MLPBlock(rngs)
        self.b2 = MLPBlock(rngs)

    def __call__(self, x, remat=False):
        call = nnx.remat(MLPBlock.__call__) if remat else MLPBlock.__call__
        return call(self.b2, call(self.b1, x))


@functools.partial(nnx.jit, static_argnames="remat")
def _deep_step(model, x, remat):
    return nnx.value_and_grad(lambda m: jnp.sum(m(x, remat=remat) ** 2))(model)


def test_nnx_remat_of_fusion_blocks_gives_the_same_loss_gradients_and_noise_stream():
    """Rematerialised blocks recompute the forward pass in the backward pass: they must
    program the kernels with the same noise draw (random noise here), so the loss, the
    gradients and the advanced noise streams equal those without remat."""
    aware = fj.nnx.fusionize(Deep(nnx.Rngs(0)), g_max=20.0, noise=RANDOM, rngs=nnx.Rngs(noise=1))
    assert type(aware.b1.l1) is fj.nnx.FusionLinear
    plain, remat = nnx.clone(aware), nnx.clone(aware)
    start = np.asarray(aware.b1.l1.noise_key[...])
    loss, grads = _deep_step(plain, X, False)
    loss_r, grads_r = _deep_step(remat, X, True)
    close(loss_r, loss, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: close(a, b, rtol=1e-5, atol=1e-6), grads_r, grads)
    assert_trees_equal(nnx.state(remat, fj.nnx.NoiseKey), nnx.state(plain, fj.nnx.NoiseKey))
    assert not np.array_equal(remat.b1.l1.noise_key[...], start)  # the stream advanced
    # The next step draws new noise.
    assert not np.isclose(_deep_step(remat, X, True)[0], loss_r)


# --- 2. Linen nn.remat and nn.vmap ----------------------------------------------------------------


class LBlock(nn.Module):
    """A FusionDense (programs itself) and a plain Dense (programmed by fusionize).

    ``fusion=False``: both plain, the digital reference (the same names, Dense_0 and
    Dense_1, so the same variables)."""

    noise: Any = None
    fusion: bool = True

    @nn.compact
    def __call__(self, x):
        if self.fusion:
            first = fj.linen.FusionDense(C, noise=self.noise)
        else:
            first = nn.Dense(C)
        return nn.Dense(C)(jnp.tanh(first(x))) + x


class LRematModel(nn.Module):
    noise: Any = None
    remat: bool = False
    fusion: bool = True

    @nn.compact
    def __call__(self, x):
        block = nn.remat(LBlock) if self.remat else LBlock
        x = block(self.noise, self.fusion, name="block0")(x)
        return block(self.noise, self.fusion, name="block1")(x)


def test_linen_remat_programs_as_without_remat_and_as_program_params():
    """nn.remat blocks (a FusionDense and a plain Dense under fusionize): with random noise
    the loss and gradients equal those without remat (the recomputed forward pass draws
    the same noise); with OffsetNoise the output is the plain model on program_params'
    kernels."""
    model, remat_model = LRematModel(RANDOM), LRematModel(RANDOM, remat=True)
    variables = model.init(jax.random.key(0), X)
    assert_trees_equal(remat_model.init(jax.random.key(0), X), variables)

    def loss(fusionized, params, key):
        y = fusionized.apply({"params": params}, X, rngs={"noise": key})
        return jnp.sum(y**2)

    steps = [
        jax.jit(jax.value_and_grad(functools.partial(loss, fj.linen.fusionize(m, noise=RANDOM))))
        for m in (model, remat_model)
    ]
    (value, grads), (value_r, grads_r) = (step(variables["params"], KEY) for step in steps)
    close(value_r, value, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: close(a, b, rtol=1e-5, atol=1e-6), grads_r, grads)
    # The layers draw their noise from the "noise" RNG: another key, another loss.
    assert not np.isclose(steps[1](variables["params"], jax.random.key(8))[0], value_r)

    offset_model = LRematModel(OffsetNoise(), remat=True)
    layouts = fj.linen.kernel_layouts(offset_model, X)
    assert layouts[("params", "block0", "Dense_0", "kernel")] == KernelAxes.dense()
    chip = program_params(variables, KEY, noise=OffsetNoise(), layouts=layouts)
    y = fj.linen.fusionize(offset_model, noise=OffsetNoise()).apply(
        variables, X, rngs={"noise": KEY}
    )
    reference = LRematModel(remat=True, fusion=False)  # plain layers, the same variables
    close(y, reference.apply(chip, X))
    assert not np.allclose(y, reference.apply(variables, X), atol=1e-3)


class LVStack(nn.Module):
    """Three LBlocks made by nn.vmap over the parameters: outputs [3, batch, C]."""

    noise: Any = None
    fusion: bool = True

    @nn.compact
    def __call__(self, x):
        stack = nn.vmap(
            LBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True, "noise": True},
            in_axes=None,
            out_axes=0,
            axis_size=3,
        )
        return stack(self.noise, self.fusion, name="stack")(x)


def scaled_feature(variables):
    """The variables with output feature 1 of the stack's layer 0 ``Dense_0`` times 10."""
    scaled = jax.tree.map(lambda a: a, variables)
    kernel = scaled["params"]["stack"]["Dense_0"]["kernel"]
    scaled["params"]["stack"]["Dense_0"]["kernel"] = kernel.at[0, :, 1].multiply(10.0)
    return scaled


def test_linen_vmap_stack_programs_each_layer_alone():
    model = LVStack(OffsetNoise())
    variables = model.init(jax.random.key(0), X)
    layouts = fj.linen.kernel_layouts(model, X)
    assert layouts == {
        ("params", "stack", "Dense_0", "kernel"): KernelAxes.dense().stacked(),
        ("params", "stack", "Dense_1", "kernel"): KernelAxes.dense().stacked(),
    }
    fused = fj.linen.fusionize(model, noise=OffsetNoise())
    y = fused.apply(variables, X, rngs={"noise": KEY})
    assert y.shape == (3, 3, C)
    chip = program_params(variables, KEY, noise=OffsetNoise(), layouts=layouts)
    close(y, LVStack(fusion=False).apply(chip, X))
    # Each stacked layer alone: its plain block applied to its programmed kernels.
    for i in range(3):
        layer_params = jax.tree.map(lambda a, i=i: a[i], variables["params"]["stack"])
        alone = {
            name: {
                "kernel": program_kernel(p["kernel"], KEY, noise=OffsetNoise()),
                "bias": p["bias"],
            }
            for name, p in layer_params.items()
        }
        close(y[i], LBlock(fusion=False).apply({"params": alone}, X))
    # A layer's scale sets only its own rows: scaling layer 0 leaves layers 1, 2 as they were.
    scaled = jax.tree.map(lambda a: a, variables)
    kernel = scaled["params"]["stack"]["Dense_0"]["kernel"]
    scaled["params"]["stack"]["Dense_0"]["kernel"] = kernel.at[0].multiply(50.0)
    y_scaled = fused.apply(scaled, X, rngs={"noise": KEY})
    np.testing.assert_array_equal(y_scaled[1:], y[1:])
    assert not np.allclose(y_scaled[0], y[0])
    # Each output feature of a stacked Dense kernel is one chip row: scaling feature 1 of
    # layer 0 scales its programmed weights alone, exactly.
    chip_scaled = program_params(
        scaled_feature(variables), KEY, noise=OffsetNoise(), layouts=layouts
    )
    assert_only_row_scaled(
        chip["params"]["stack"]["Dense_0"]["kernel"],
        chip_scaled["params"]["stack"]["Dense_0"]["kernel"],
        (0, slice(None), 1),
        10.0,
    )
    # split_rngs={"noise": True}: identical layers draw different random noise.
    same = jax.tree.map(lambda a: jnp.broadcast_to(a[:1], a.shape), variables)
    noisy = fj.linen.fusionize(LVStack(RANDOM), noise=RANDOM)
    y_noisy = noisy.apply(same, X, rngs={"noise": KEY})
    assert not np.allclose(y_noisy[0], y_noisy[1]) and not np.allclose(y_noisy[1], y_noisy[2])


# --- 3. flax.nnx.bridge ------------------------------------------------------------------------


def test_bridge_to_nnx_wraps_a_linen_fusion_layer():
    layer = fj.linen.FusionDense(C, noise=OffsetNoise())
    model = bridge.ToNNX(layer, rngs=nnx.Rngs(params=0, noise=1))
    bridge.lazy_init(model, X)
    params = nnx.state(model, nnx.Param)
    kernel, bias = params["kernel"][...], params["bias"][...]
    # The parameters are those of nn.Dense through the bridge.
    dense = bridge.ToNNX(nn.Dense(C), rngs=nnx.Rngs(params=0, noise=1))
    bridge.lazy_init(dense, X)
    assert_trees_equal(params, nnx.state(dense, nnx.Param))
    programmed = program_kernel(kernel, KEY, noise=OffsetNoise())
    close(model(X), X @ programmed + bias)
    np.testing.assert_allclose(model(X, deterministic=True), X @ kernel + bias, rtol=1e-6)

    # A training step through the bridge: the exact gradient of the programmed layer.
    @nnx.jit
    def step(m):
        return nnx.value_and_grad(lambda m: jnp.sum(jnp.sin(m(X))))(m)

    value, grads = step(model)
    expected_value, expected_grad = jax.value_and_grad(
        lambda k: jnp.sum(jnp.sin(X @ program_kernel(k, KEY, noise=OffsetNoise()) + bias))
    )(kernel)
    close(value, expected_value)
    close(grads["kernel"][...], expected_grad)
    # Random noise: the bridge's "noise" stream advances, so every call draws anew.
    noisy = bridge.ToNNX(fj.linen.FusionDense(C, noise=RANDOM), rngs=nnx.Rngs(params=0, noise=1))
    bridge.lazy_init(noisy, X)
    y1, y2 = noisy(X), noisy(X)
    assert not np.allclose(y1, y2)
    assert not np.allclose(y1, noisy(X, deterministic=True), atol=1e-3)


def test_bridge_to_linen_wraps_an_nnx_fusion_layer():
    rngs = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    wrapped = bridge.ToLinen(fj.nnx.FusionLinear, args=(C, C), kwargs={"noise": OffsetNoise()})
    variables = wrapped.init(rngs, X)
    # The variables are the plain layer's: no RNG state, same values.
    plain = bridge.ToLinen(nnx.Linear, args=(C, C)).init(rngs, X)
    assert_trees_equal(variables, plain)
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    close(
        wrapped.apply(variables, X, rngs={"noise": KEY}),
        X @ program_kernel(kernel, KEY, noise=OffsetNoise()) + bias,
    )
    close(wrapped.apply(variables, X, deterministic=True), X @ kernel + bias, rtol=1e-6)
    # Random noise: the noise comes from Linen's "noise" RNG, a new draw per key.
    noisy = bridge.ToLinen(fj.nnx.FusionLinear, args=(C, C), kwargs={"noise": RANDOM})
    k1, k2 = {"noise": jax.random.key(1)}, {"noise": jax.random.key(2)}
    np.testing.assert_array_equal(
        noisy.apply(variables, X, rngs=k1), noisy.apply(variables, X, rngs=k1)
    )
    assert not np.allclose(noisy.apply(variables, X, rngs=k1), noisy.apply(variables, X, rngs=k2))


# --- 4. BatchNorm in a residual block ----------------------------------------------------------


class ResBlock(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(C, C, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = nnx.BatchNorm(C, rngs=rngs)
        self.conv2 = nnx.Conv(C, C, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(C, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        return nnx.relu(x + self.bn2(self.conv2(y)))


def _res_loss(y):
    return jnp.mean((y - 0.5) ** 2)


@nnx.jit
def _res_step(model, x):
    return nnx.value_and_grad(lambda m: _res_loss(m(x)))(model)


@nnx.jit
def _res_step_through_program_params(model, x):
    """The reference: the plain model programmed by program_params inside the step."""

    def loss(m):
        chip = program_params(m, KEY, noise=OffsetNoise())
        y = chip(x)  # training mode: the copy's BatchNorm uses and updates batch stats
        return _res_loss(y), nnx.state(chip, nnx.BatchStat)

    (value, stats), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return value, grads, stats


def test_nnx_resnet_block_with_batchnorm():
    plain = ResBlock(nnx.Rngs(0))
    fused = fj.nnx.fusionize(plain, noise=OffsetNoise(), rngs=nnx.Rngs(noise=1))
    assert type(fused.conv1) is fj.nnx.FusionConv and type(fused.bn1) is nnx.BatchNorm
    # program_params programs the kernels only: BatchNorm's scale, bias, mean, var untouched.
    chip = program_params(plain, KEY, noise=OffsetNoise())
    plain_leaves = dict(nnx.to_flat_state(nnx.state(plain)))
    for path, leaf in nnx.to_flat_state(nnx.state(chip)):
        before = np.asarray(plain_leaves[path][...])
        if path[-1] == "kernel":
            assert not np.allclose(leaf[...], before)
        else:
            np.testing.assert_array_equal(leaf[...], before)
    assert {p[-1] for p, _ in nnx.to_flat_state(nnx.state(chip, nnx.BatchStat))} == {"mean", "var"}
    # A training step: the batch statistics move with the programmed kernels.
    value, grads = _res_step(fused, XC)
    ref_value, ref_grads, ref_stats = _res_step_through_program_params(plain, XC)
    close(value, ref_value)
    jax.tree.map(lambda a, b: close(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads)
    stats = nnx.state(fused, nnx.BatchStat)
    jax.tree.map(lambda a, b: close(a, b, rtol=1e-5, atol=1e-6), stats, ref_stats)
    assert not np.allclose(fused.bn1.mean[...], 0.0)
    digital = nnx.clone(plain)
    digital(XC)  # a digital training call: other statistics
    assert not np.allclose(digital.bn1.mean[...], fused.bn1.mean[...], rtol=1e-3, atol=1e-7)
    # Eval mode is the digital model with the same parameters and statistics.
    fused.eval()
    same = nnx.clone(plain)
    nnx.update(same, nnx.state(fused, nnx.Param), nnx.state(fused, nnx.BatchStat))
    same.eval()
    np.testing.assert_array_equal(fused(XC), same(XC))


class LResBlock(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.Conv(C, (3, 3), use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=not train)(y))
        y = nn.Conv(C, (3, 3), use_bias=False)(y)
        return nn.relu(x + nn.BatchNorm(use_running_average=not train)(y))


def test_linen_resnet_block_with_batchnorm():
    model = LResBlock()
    variables = model.init(jax.random.key(0), XC, False)
    layouts = fj.linen.kernel_layouts(model, XC, False)
    assert set(layouts) == {("params", f"Conv_{i}", "kernel") for i in (0, 1)}
    chip = program_params(variables, KEY, noise=OffsetNoise(), layouts=layouts)
    for name in ("BatchNorm_0", "BatchNorm_1"):
        assert_trees_equal(chip["params"][name], variables["params"][name])
    assert_trees_equal(chip["batch_stats"], variables["batch_stats"])
    fused = fj.linen.fusionize(model, noise=OffsetNoise())
    y, updates = fused.apply(variables, XC, True, rngs={"noise": KEY}, mutable=["batch_stats"])
    y_ref, updates_ref = model.apply(chip, XC, True, mutable=["batch_stats"])
    close(y, y_ref)
    jax.tree.map(lambda a, b: close(a, b, rtol=1e-5, atol=1e-6), updates, updates_ref)
    _, digital_updates = model.apply(variables, XC, True, mutable=["batch_stats"])
    mean = updates["batch_stats"]["BatchNorm_0"]["mean"]
    digital_mean = digital_updates["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(mean, digital_mean, rtol=1e-3, atol=1e-7)
    # Eval mode (running averages, digital weights) is the plain model.
    trained = {**variables, **updates}
    np.testing.assert_array_equal(
        fused.apply(trained, XC, False, chip_deterministic=True), model.apply(trained, XC, False)
    )


# --- 5. convolution options ---------------------------------------------------------------------

CONV_OPTIONS = {
    "kernel_dilation": {"kernel_size": (3, 3), "kernel_dilation": (2, 2)},
    # lax refuses string padding with input dilation: explicit padding
    "input_dilation": {"kernel_size": (3, 3), "input_dilation": (2, 2), "padding": ((1, 1),) * 2},
    "grouped": {"kernel_size": (3, 3), "feature_group_count": 2},
    "depthwise": {"kernel_size": (3, 3), "feature_group_count": C},
    "circular_strided": {"kernel_size": (3, 3), "strides": (2, 2), "padding": "CIRCULAR"},
    "3d": {"kernel_size": (2, 2, 2)},
}
X3D = normal((1, 4, 4, 4, C), 3)


@pytest.mark.parametrize("option", list(CONV_OPTIONS))
def test_convolution_options_nnx_and_linen(option):
    """Each option: the fusionized and the Fusion layer compute with the kernel as
    program_params programs it, and every output channel is one chip row (scaling one
    output channel scales its programmed weights, and its output alone)."""
    opts = CONV_OPTIONS[option]
    x = X3D if len(opts["kernel_size"]) == 3 else XC
    axes = KernelAxes.conv(len(opts["kernel_size"]))

    # NNX: fusionize of nnx.Conv, and FusionConv directly.
    plain = nnx.Sequential(nnx.Conv(C, C, **opts, rngs=nnx.Rngs(0)))
    assert fj.nnx.kernel_layouts(plain) == {("layers", 0, "kernel"): axes}
    fused = fj.nnx.fusionize(plain, noise=OffsetNoise(), rngs=nnx.Rngs(noise=0))
    assert type(fused.layers[0]) is fj.nnx.FusionConv
    chip = program_params(plain, KEY, noise=OffsetNoise())
    expected = chip(x)
    y = fused(x)
    close(y, expected)
    assert not np.allclose(y, plain(x), atol=1e-3)
    direct = fj.nnx.FusionConv(C, C, **opts, noise=OffsetNoise(), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(direct.kernel[...], plain.layers[0].kernel[...])
    close(direct(x), expected)
    fused.eval(), direct.eval()  # eval mode: the digital convolution
    np.testing.assert_array_equal(fused(x), plain(x))
    np.testing.assert_array_equal(direct(x), plain(x))
    scaled = nnx.clone(plain)
    scaled.layers[0].kernel[...] = scaled.layers[0].kernel[...].at[..., 1].multiply(10.0)
    got = program_params(scaled, KEY, noise=OffsetNoise()).layers[0].kernel[...]
    assert_only_row_scaled(chip.layers[0].kernel[...], got, (..., 1), 10.0)
    y_scaled = fj.nnx.fusionize(scaled, noise=OffsetNoise(), rngs=nnx.Rngs(noise=0))(x)
    keep = np.arange(C) != 1
    np.testing.assert_allclose(y_scaled[..., keep], y[..., keep], rtol=1e-6, atol=1e-6)
    assert not np.allclose(y_scaled[..., 1], y[..., 1])

    # Linen: the layout, fusionize's interceptor, and the drop-in FusionConv.
    model = nn.Sequential([nn.Conv(C, **opts)])
    variables = model.init(jax.random.key(0), x)
    layouts = fj.linen.kernel_layouts(model, x)
    assert layouts == {("params", "layers_0", "kernel"): axes}
    linen_chip = program_params(variables, KEY, noise=OffsetNoise(), layouts=layouts)
    expected = model.apply(linen_chip, x)
    linen_fused = fj.linen.fusionize(model, noise=OffsetNoise())
    close(linen_fused.apply(variables, x, rngs={"noise": KEY}), expected)
    drop_in = fj.linen.FusionConv(C, **opts, noise=OffsetNoise())
    single = nn.Conv(C, **opts)
    own = drop_in.init(jax.random.key(0), x)
    assert_trees_equal(own, single.init(jax.random.key(0), x))
    own_chip = program_params(own, KEY, noise=OffsetNoise(), layouts={("params", "kernel"): axes})
    close(drop_in.apply(own, x, rngs={"noise": KEY}), single.apply(own_chip, x))
    np.testing.assert_array_equal(drop_in.apply(own, x, deterministic=True), single.apply(own, x))


# --- 6. NNX containers and nested submodules ------------------------------------------------------


class Inner(nnx.Module):
    def __init__(self, rngs):
        self.proj = nnx.Linear(C, C, rngs=rngs)
        self.gate = nnx.LinearGeneral(C, C, rngs=rngs)

    def __call__(self, x):
        return self.proj(x) * jax.nn.sigmoid(self.gate(x))


class Tower(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List(
            [
                nnx.Linear(C, C, rngs=rngs),
                nnx.Sequential(Inner(rngs), nnx.relu),
                nnx.List([nnx.Linear(C, C, rngs=rngs)]),
            ]
        )
        self.heads = nnx.Dict({"a": nnx.Linear(C, C, rngs=rngs), "b": Inner(rngs)})

    def __call__(self, x):
        x = self.layers[1](self.layers[0](x))
        x = self.layers[2][0](x)
        return self.heads["a"](x) + self.heads["b"](x)


KERNEL_PATHS = {
    ("layers", 0, "kernel"),
    ("layers", 1, "layers", 0, "proj", "kernel"),
    ("layers", 1, "layers", 0, "gate", "kernel"),
    ("layers", 2, 0, "kernel"),
    ("heads", "a", "kernel"),
    ("heads", "b", "proj", "kernel"),
    ("heads", "b", "gate", "kernel"),
}


def test_fusionize_reaches_layers_in_nnx_dict_and_list():
    plain = Tower(nnx.Rngs(0))
    fused = fj.nnx.fusionize(plain, noise=OffsetNoise(), rngs=nnx.Rngs(noise=1))
    assert type(fused.layers) is nnx.List and type(fused.heads) is nnx.Dict
    assert type(fused.layers[2]) is nnx.List
    # Every layer with a kernel converted; the paths and values kept.
    with_kernel = {
        path: type(node)
        for path, node in nnx.iter_graph(fused)
        if isinstance(node, nnx.Module) and "kernel" in vars(node)
    }
    assert {(*p, "kernel") for p in with_kernel} == KERNEL_PATHS
    assert set(with_kernel.values()) == {fj.nnx.FusionLinear, fj.nnx.FusionLinearGeneral}
    assert type(plain.heads["a"]) is nnx.Linear  # the input is not changed
    assert_trees_equal(nnx.state(fused, nnx.Param), nnx.state(plain, nnx.Param))
    assert set(fj.nnx.kernel_layouts(fused)) == KERNEL_PATHS
    close(fused(X), program_params(plain, KEY, noise=OffsetNoise())(X))
    fused.eval()
    np.testing.assert_array_equal(fused(X), plain(X))
    # Random noise: every layer its own noise stream, and program_params' key by path.
    noisy = fj.nnx.fusionize(plain, noise=RANDOM, rngs=nnx.Rngs(noise=1))
    noise_keys = nnx.to_flat_state(nnx.state(noisy, fj.nnx.NoiseKey))
    keys = [np.asarray(leaf[...]).tobytes() for _, leaf in noise_keys]
    assert len(keys) == len(KERNEL_PATHS) == len(set(keys))
    chip = program_params(noisy, KEY)
    path = ("heads", "b", "gate", "kernel")
    # The documented derivation, stable across runs: fold_in of the CRC-32 of "a/b/c".
    pinned = jax.random.fold_in(KEY, zlib.crc32(b"heads/b/gate/kernel") & 0x7FFFFFFF)
    np.testing.assert_array_equal(
        jax.random.key_data(leaf_key(KEY, path)), jax.random.key_data(pinned)
    )
    np.testing.assert_array_equal(
        chip.heads["b"].gate.kernel[...],
        program_kernel(plain.heads["b"].gate.kernel[...], leaf_key(KEY, path), noise=RANDOM),
    )
    path = ("layers", 2, 0, "kernel")
    np.testing.assert_array_equal(
        chip.layers[2][0].kernel[...],
        program_kernel(plain.layers[2][0].kernel[...], leaf_key(KEY, path), noise=RANDOM),
    )


class TiedLM(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(8, C, rngs=rngs)
        self.mlp = nnx.Linear(C, C, rngs=rngs)

    def __call__(self, tokens):
        return self.embed.attend(jnp.tanh(self.mlp(self.embed(tokens))))


def test_embedding_with_tied_head_stays_digital():
    """nnx.Embed holds an embedding, not a kernel: fusionize keeps it (and its tied
    output head, Embed.attend) digital without complaint; program_params leaves it."""
    plain = TiedLM(nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 8, (2, 5)))
    fused = fj.nnx.fusionize(plain, noise=OffsetNoise(), rngs=nnx.Rngs(noise=1))
    assert type(fused.embed) is nnx.Embed and type(fused.mlp) is fj.nnx.FusionLinear
    chip = program_params(plain, KEY, noise=OffsetNoise())
    np.testing.assert_array_equal(chip.embed.embedding[...], plain.embed.embedding[...])
    close(fused(tokens), chip(tokens))
    assert not np.allclose(fused(tokens), plain(tokens), atol=1e-3)
