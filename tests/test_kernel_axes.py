"""Kernels of any shape: every output feature of every layer is one chip row.

KernelAxes and the columns view, program_kernel/program_params on stacked and
attention kernels, module-aware program_params, the NNX LinearGeneral/Einsum
layers and fusionize.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import assert_only_row_scaled, normal
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from noise_doubles import AbsoluteNoise, OffsetNoise

import fusion_jax as fj
from fusion_jax.layout import KernelAxes
from fusion_jax.model_programming import leaf_key, program_kernel, program_params

KEY = jax.random.key(7)
NOISE = AbsoluteNoise(1.0)


# --- KernelAxes and the columns view ----------------------------------------------------------


def test_einsum_axes_follow_the_equation():
    # contracted with the input: inputs; kernel and output only: outputs; all three: stack.
    assert KernelAxes.einsum("...d,dhk->...hk") == KernelAxes((0,), (1, 2))
    assert KernelAxes.einsum("bthd,hdo->bto") == KernelAxes((0, 1), (2,))
    assert KernelAxes.einsum("bhd,hdk->bhk") == KernelAxes((1,), (2,), stack=(0,))
    assert KernelAxes.einsum("ab, cb -> ac") == KernelAxes((1,), (0,))  # a transposed kernel
    with pytest.raises(ValueError, match="neither"):
        KernelAxes.einsum("ab,bcz->ac")
    with pytest.raises(ValueError, match="ellipsis"):
        KernelAxes.einsum("ab,...b->a")
    with pytest.raises(ValueError, match="explicit"):
        KernelAxes.einsum("ab,bc")
    with pytest.raises(ValueError, match="repeats"):
        KernelAxes.einsum("ab,bb->a")


def test_kernel_axes_must_name_every_axis_once():
    with pytest.raises(ValueError, match="exactly once"):
        KernelAxes((0,), (0,))
    with pytest.raises(ValueError, match="exactly once"):
        KernelAxes((0,), (2,))
    with pytest.raises(ValueError, match="at least one"):
        KernelAxes((), (0,))
    with pytest.raises(ValueError, match="has 3 axes"):
        program_kernel(jnp.ones((2, 3, 4)), axes=KernelAxes.dense(), noise=None)


@pytest.mark.parametrize(
    "shape, axes",
    [
        ((3, 4), KernelAxes.dense()),
        ((2, 3, 4, 5), KernelAxes.conv(2)),
        ((3, 4, 5), KernelAxes.dense().stacked()),
        ((4, 2, 3), KernelAxes.einsum("btd,dhk->bthk")),
        ((2, 3, 4), KernelAxes.einsum("bhd,hdk->bhk")),
        ((3, 4, 2), KernelAxes.einsum("bk,hkd->bhd").stacked(0)),
    ],
)
def test_columns_round_trip(shape, axes):
    kernel = normal(shape)
    cols = fj.layout.kernel_to_columns(kernel, axes)
    np.testing.assert_array_equal(fj.layout.columns_to_kernel(cols, axes, shape), kernel)
    n_out = int(np.prod([shape[a] for a in axes.outputs]))
    assert cols.shape[-1] == n_out and cols.shape[:-2] == tuple(shape[a] for a in axes.stack)


def test_conv_columns_are_the_export_rows():
    kernel = normal((2, 3, 4, 5))
    np.testing.assert_array_equal(
        fj.layout.kernel_to_columns(kernel, KernelAxes.conv(2)).T,
        fj.layout.kernel_to_rows(kernel),
    )


# --- scale equivariance, row by row -------------------------------------------------------------


@given(c=st.floats(0.05, 20.0) | st.floats(-20.0, -0.05), layer=st.integers(0, 2))
def test_stacked_kernel_scale_equivariance(c, layer):
    """Scaling one output feature of one stacked layer by c scales its programmed row by c
    and changes nothing else (same key, random noise)."""
    kernel = normal((3, 6, 4))
    axes = KernelAxes.dense().stacked()
    base = program_kernel(kernel, KEY, axes=axes, noise=NOISE, g_max=20.0)
    index = (layer, slice(None), 2)
    scaled = program_kernel(kernel.at[index].multiply(c), KEY, axes=axes, noise=NOISE, g_max=20.0)
    assert_only_row_scaled(base, scaled, index, c)


@given(c=st.floats(0.05, 20.0) | st.floats(-20.0, -0.05), head=st.integers(0, 1))
def test_attention_kernels_scale_equivariance(c, head):
    """In nnx.MultiHeadAttention a query output feature (head, dim) is one chip row over
    the inputs, and an output-projection feature one row over every head and dim.

    OffsetNoise's offset is absolute, so a row's result depends on its own scale: a
    feature programmed in another feature's row would change that row."""
    mha = nnx.MultiHeadAttention(2, 6, decode=False, rngs=nnx.Rngs(0))
    base = program_params(mha, KEY, noise=OffsetNoise(), g_max=20.0)
    query_index = (slice(None), head, 1)  # query kernel [in, heads, head_dim]
    scaled = nnx.clone(mha)
    scaled.query.kernel[...] = scaled.query.kernel[...].at[query_index].multiply(c)
    out_index = (slice(None), slice(None), 3)  # out kernel [heads, head_dim, out]
    scaled.out.kernel[...] = scaled.out.kernel[...].at[out_index].multiply(c)
    got = program_params(scaled, KEY, noise=OffsetNoise(), g_max=20.0)
    assert_only_row_scaled(base.query.kernel[...], got.query.kernel[...], query_index, c)
    assert_only_row_scaled(base.out.kernel[...], got.out.kernel[...], out_index, c)
    np.testing.assert_array_equal(got.key.kernel[...], base.key.kernel[...])


# --- a stacked layer is programmed as if alone -------------------------------------------------


@pytest.mark.parametrize("noise", [None, OffsetNoise()], ids=["noise-free", "per-device"])
def test_stacked_layer_equals_the_layer_programmed_alone(noise):
    kernel = normal((3, 6, 4)) * jnp.array([1.0, 30.0, 0.01])[:, None, None]  # in != out
    stacked = program_kernel(kernel, KEY, axes=KernelAxes.dense().stacked(), noise=noise)
    for i in range(3):
        np.testing.assert_allclose(
            stacked[i], program_kernel(kernel[i], KEY, noise=noise), rtol=1e-5, atol=1e-6
        )


class Block(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(6, 6, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(2, 6, decode=False, rngs=rngs)
        self.mix = nnx.Einsum("btd,dk->btk", (6, 6), (6,), rngs=rngs)

    def __call__(self, x):
        x = x + self.attention(nnx.relu(self.linear(x)))
        return x + self.mix(x)


class Stacked(nnx.Module):
    """An input layer, then three blocks made by nnx.vmap and applied by nnx.scan."""

    def __init__(self, rngs):
        self.embed = nnx.Linear(3, 6, rngs=rngs)

        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=0, out_axes=0)
        def blocks(rngs):
            return Block(rngs)

        self.blocks = blocks(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(x, block):
            return block(x)

        return run(self.embed(x), self.blocks)


@pytest.fixture(scope="module")
def stacked_model():
    return Stacked(nnx.Rngs(0))


def test_module_stacked_layers_equal_each_layer_alone(stacked_model):
    """program_params on the module programs each scanned block's kernels as that block's
    layer alone (deterministic per-device model), attention included."""
    chip = program_params(stacked_model, KEY, noise=OffsetNoise())
    for name, axes in [
        ("linear", KernelAxes.dense()),
        ("mix", KernelAxes.dense()),
        ("attention/query", KernelAxes.general(1, 2)),
        ("attention/out", KernelAxes.general(2, 1)),
    ]:
        layer, programmed = stacked_model.blocks, chip.blocks
        for part in name.split("/"):
            layer, programmed = getattr(layer, part), getattr(programmed, part)
        for i in range(3):
            alone = program_kernel(layer.kernel[...][i], KEY, axes=axes, noise=OffsetNoise())
            np.testing.assert_allclose(programmed.kernel[...][i], alone, rtol=1e-5, atol=1e-6)


def test_undeclared_rank3_kernels_are_refused_naming_the_leaf(stacked_model):
    state = nnx.state(stacked_model, nnx.Param)
    with pytest.raises(ValueError, match="'blocks/attention/key/kernel'.*rank above 2"):
        program_params(state, None, noise=None)
    with pytest.raises(ValueError, match="'w/kernel'.*rank above 2"):
        program_params({"w": {"kernel": jnp.ones((2, 3, 4))}}, None, noise=None)
    with pytest.raises(ValueError, match="lack.*'nope/kernel'"):
        program_params(
            {"kernel": jnp.ones((2, 3))},
            None,
            noise=None,
            layouts={"nope/kernel": KernelAxes.dense()},
        )
    # With the module's layouts the state programs as the module does.
    layouts = fj.nnx.kernel_layouts(stacked_model)
    from_state = program_params(state, KEY, noise=OffsetNoise(), layouts=layouts)
    from_module = program_params(stacked_model, KEY, noise=OffsetNoise())
    jax.tree.map(np.testing.assert_array_equal, from_state, nnx.state(from_module, nnx.Param))


def test_a_kernel_that_does_not_fit_its_layer_is_refused():
    layer = nnx.Linear(3, 6, rngs=nnx.Rngs(0))
    layer.kernel = nnx.Param(jnp.ones((6, 3)))
    with pytest.raises(ValueError, match="kernel.*does not end with its own kernel shape"):
        program_params(nnx.Sequential(layer), None, noise=None)


# --- module-aware program_params -----------------------------------------------------------------


def test_module_program_params_reads_each_layers_settings_and_keeps_the_input():
    net = nnx.Sequential(
        fj.nnx.FusionLinear(
            3, 6, g_max=10.0, noise=OffsetNoise(), t_inference=5.0, rngs=nnx.Rngs(0)
        ),
        nnx.Linear(6, 3, rngs=nnx.Rngs(1)),
    )
    before = jax.tree.map(np.array, nnx.state(net, nnx.Param))
    chip = program_params(net, KEY)
    assert isinstance(chip, nnx.Sequential) and chip is not net
    k0, k1 = net.layers[0].kernel[...], net.layers[1].kernel[...]
    np.testing.assert_array_equal(
        chip.layers[0].kernel[...],
        program_kernel(k0, KEY, g_max=10.0, noise=OffsetNoise(), t_inference=5.0),
    )
    # The plain layer: the defaults (the chip model at 40 uS, t=0) with its leaf key.
    np.testing.assert_array_equal(
        chip.layers[1].kernel[...], program_kernel(k1, leaf_key(KEY, ("layers", 1, "kernel")))
    )
    # The call overrides the layer's settings.
    over = program_params(net, KEY, g_max=25.0)
    np.testing.assert_array_equal(
        over.layers[0].kernel[...],
        program_kernel(k0, KEY, g_max=25.0, noise=OffsetNoise(), t_inference=5.0),
    )
    jax.tree.map(np.testing.assert_array_equal, nnx.state(net, nnx.Param), before)
    np.testing.assert_array_equal(chip.layers[0].bias[...], net.layers[0].bias[...])


def test_module_program_params_under_jit_and_vmap_over_g_max(stacked_model):
    @jax.jit
    def programmed_query(g):
        return program_params(stacked_model, None, noise=None, g_max=g).blocks.attention.query

    one = programmed_query(jnp.float32(20.0)).kernel[...]
    np.testing.assert_allclose(
        one, stacked_model.blocks.attention.query.kernel[...], rtol=1e-5, atol=1e-6
    )


# --- NNX layers and fusionize ---------------------------------------------------------------------


def test_fusion_einsum_programs_with_the_equations_axes():
    layer = fj.nnx.FusionEinsum(  # d != k: inputs and outputs cannot be mixed up unseen
        "bhd,hdk->bhk", (3, 6, 4), (3, 4), noise=OffsetNoise(), rngs=nnx.Rngs(0)
    )
    x = normal((5, 3, 6), 1)
    kernel = program_kernel(
        layer.kernel[...], KEY, axes=KernelAxes.einsum("bhd,hdk->bhk"), noise=OffsetNoise()
    )
    expected = jnp.einsum("bhd,hdk->bhk", x, kernel) + layer.bias[...]
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    # The equation may also come with the call.
    late = fj.nnx.FusionEinsum(None, (3, 6, 4), (3, 4), noise=OffsetNoise(), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(late(x, "bhd,hdk->bhk"), expected, rtol=1e-5, atol=1e-5)


def test_fusion_linear_general_with_batch_axis_programs_each_batch_layer_alone():
    layer = fj.nnx.FusionLinearGeneral(
        3, 6, axis=-1, batch_axis={0: 2}, noise=OffsetNoise(), rngs=nnx.Rngs(0)
    )
    x = normal((2, 5, 3), 1)
    y = layer(x)
    for b in range(2):
        k = program_kernel(layer.kernel[...][b], KEY, noise=OffsetNoise())
        np.testing.assert_allclose(y[b], x[b] @ k + layer.bias[...][b], rtol=1e-5, atol=1e-5)


def test_mha_with_fusion_projections_programs_as_program_params():
    """fusionize puts FusionLinearGeneral in nnx.MultiHeadAttention: a training call
    computes with the kernels program_params gives the plain layer."""
    mha = nnx.MultiHeadAttention(2, 6, decode=False, rngs=nnx.Rngs(0))
    fused = fj.nnx.fusionize(mha, noise=OffsetNoise(), g_max=15.0, rngs=nnx.Rngs(noise=0))
    for name in ("query", "key", "value", "out"):
        assert type(getattr(fused, name)) is fj.nnx.FusionLinearGeneral
        assert type(getattr(mha, name)) is nnx.LinearGeneral  # the input is not changed
    x = normal((2, 5, 6), 3)
    expected = program_params(mha, KEY, noise=OffsetNoise(), g_max=15.0)(x)
    np.testing.assert_allclose(fused(x), expected, rtol=1e-4, atol=1e-5)


def test_fusionize_attention_and_scanned_blocks(stacked_model):
    fused = fj.nnx.fusionize(stacked_model, g_max=25.0, noise=NOISE, rngs=nnx.Rngs(noise=3))
    assert type(fused.embed) is fj.nnx.FusionLinear
    assert type(fused.blocks.linear) is fj.nnx.FusionLinear
    assert type(fused.blocks.mix) is fj.nnx.FusionEinsum
    assert type(fused.blocks.attention.out) is fj.nnx.FusionLinearGeneral
    assert type(stacked_model.blocks.linear) is nnx.Linear
    # Same parameters, same structure.
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.state(fused, nnx.Param),
        nnx.state(stacked_model, nnx.Param),
    )
    x = normal((2, 5, 3), 4)
    fused.eval()
    clean = stacked_model(x)  # each eager call of a scanned model traces it again: once here
    np.testing.assert_allclose(fused(x), clean, rtol=1e-6, atol=1e-6)
    # Training mode programs every layer, scanned ones with their own stacked noise stream.
    fused.train()
    y1, y2 = fused(x), fused(x)
    assert np.all(np.isfinite(y1)) and not np.allclose(y1, y2)
    assert not np.allclose(y1, clean, atol=1e-3)
    # The settings travel: program_params reads them from the fusionized model.
    chip = program_params(fused, KEY)
    expected = program_kernel(
        stacked_model.embed.kernel[...],
        leaf_key(KEY, ("embed", "kernel")),
        g_max=25.0,
        noise=NOISE,
    )
    np.testing.assert_array_equal(chip.embed.kernel[...], expected)


# --- Linen ----------------------------------------------------------------------------------------


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        x = x + nn.MultiHeadDotProductAttention(2)(nn.relu(nn.Dense(6)(x)))
        return x + nn.Einsum((6, 6), "btd,dk->btk")(x), None


class LinenStacked(nn.Module):
    """An input layer, then three blocks under nn.scan (parameters stacked on axis 0)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(6)(x)
        scan = nn.scan(
            LinenBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True, "noise": True},  # a noise key per scanned layer
            length=3,
        )
        return scan()(x, None)[0]


@pytest.fixture(scope="module")
def linen_stacked():
    x = normal((2, 5, 3), 4)
    model = LinenStacked()
    return model, model.init(jax.random.key(0), x), x


def test_linen_kernel_layouts_of_scanned_attention(linen_stacked):
    model, _, x = linen_stacked
    layouts = fj.linen.kernel_layouts(model, x)
    block = ("params", "ScanLinenBlock_0")
    assert layouts[("params", "Dense_0", "kernel")] == KernelAxes.dense()
    assert layouts[(*block, "Dense_0", "kernel")] == KernelAxes.dense().stacked()
    attention = (*block, "MultiHeadDotProductAttention_0")
    assert layouts[(*attention, "query", "kernel")] == KernelAxes.general(1, 2).stacked()
    assert layouts[(*attention, "out", "kernel")] == KernelAxes.general(2, 1).stacked()
    assert layouts[(*block, "Einsum_0", "kernel")] == KernelAxes.dense().stacked()


def test_linen_fusionize_scanned_attention_programs_as_program_params(linen_stacked):
    """Under fusionize every layer (scanned, attention, einsum) computes with the kernel
    program_params gives it with the model's layouts; eval mode is the plain model."""
    model, variables, x = linen_stacked
    fused = fj.linen.fusionize(model, noise=OffsetNoise(), g_max=15.0)
    jax.tree.map(np.testing.assert_array_equal, fused.init(jax.random.key(0), x), variables)
    np.testing.assert_array_equal(
        fused.apply(variables, x, chip_deterministic=True), model.apply(variables, x)
    )
    got = fused.apply(variables, x, rngs={"noise": KEY})
    chip = program_params(
        variables, KEY, noise=OffsetNoise(), g_max=15.0, layouts=fused.kernel_layouts(x)
    )
    np.testing.assert_allclose(got, model.apply(chip, x), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, model.apply(variables, x), atol=1e-3)


def test_linen_mha_with_fusion_dot_general():
    """nn.MultiHeadDotProductAttention's dot_general hooks take FusionDotGeneral: the
    parameter tree is the plain one and a training apply uses the programmed kernels."""
    chip_dot = functools.partial(fj.linen.FusionDotGeneral, noise=OffsetNoise(), g_max=15.0)
    fused = nn.MultiHeadDotProductAttention(
        2, qkv_dot_general_cls=chip_dot, out_dot_general_cls=chip_dot
    )
    plain = nn.MultiHeadDotProductAttention(2)
    x = normal((2, 5, 6), 3)
    variables = plain.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, fused.init(jax.random.key(0), x), variables)
    layouts = fj.linen.kernel_layouts(plain, x)
    chip = program_params(variables, KEY, noise=OffsetNoise(), g_max=15.0, layouts=layouts)
    np.testing.assert_allclose(
        fused.apply(variables, x, rngs={"noise": KEY}), plain.apply(chip, x), rtol=1e-4, atol=1e-5
    )


def test_linen_dense_general_and_einsum_layers():
    x = normal((2, 5, 3), 1)
    layer = fj.linen.FusionDenseGeneral(features=6, batch_dims=(0,), noise=OffsetNoise())
    variables = layer.init(jax.random.key(0), x)
    jax.tree.map(
        np.testing.assert_array_equal,
        variables,
        nn.DenseGeneral(features=6, batch_dims=(0,)).init(jax.random.key(0), x),
    )
    p = variables["params"]
    y = layer.apply(variables, x, rngs={"noise": KEY})
    for b in range(2):  # each batch_dims index is a layer of its own
        k = program_kernel(p["kernel"][b], KEY, noise=OffsetNoise())
        np.testing.assert_allclose(y[b], x[b] @ k + p["bias"][b], rtol=1e-5, atol=1e-5)

    einsum = fj.linen.FusionEinsum((3, 2, 4), "btd,dhk->bthk", noise=OffsetNoise())
    variables = einsum.init(jax.random.key(0), x)
    p = variables["params"]
    k = program_kernel(p["kernel"], KEY, axes=KernelAxes.general(1, 2), noise=OffsetNoise())
    np.testing.assert_allclose(
        einsum.apply(variables, x, rngs={"noise": KEY}),
        jnp.einsum("btd,dhk->bthk", x, k) + p["bias"],
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        einsum.apply(variables, x, deterministic=True),
        nn.Einsum((3, 2, 4), "btd,dhk->bthk").apply(variables, x),
    )


def test_fusionize_convolutions_nnx_and_linen():
    """Conv kernels are converted too and programmed with the conv axes (one row per
    output channel over in * window inputs), in both APIs."""
    x = normal((2, 7, 3), 5)
    nnx_model = nnx.Sequential(
        nnx.Conv(3, 6, (3,), rngs=nnx.Rngs(0)), nnx.Linear(6, 3, rngs=nnx.Rngs(1))
    )
    fused = fj.nnx.fusionize(nnx_model, noise=OffsetNoise(), rngs=nnx.Rngs(noise=0))
    assert type(fused.layers[0]) is fj.nnx.FusionConv
    expected = program_params(nnx_model, KEY, noise=OffsetNoise())(x)
    np.testing.assert_allclose(fused(x), expected, rtol=1e-4, atol=1e-5)

    linen_model = nn.Sequential([nn.Conv(6, (3,)), nn.Dense(3)])
    variables = linen_model.init(jax.random.key(0), x)
    layouts = fj.linen.kernel_layouts(linen_model, x)
    assert layouts[("params", "layers_0", "kernel")] == KernelAxes.conv(1)
    chip = program_params(variables, KEY, noise=OffsetNoise(), layouts=layouts)
    np.testing.assert_allclose(
        fj.linen.fusionize(linen_model, noise=OffsetNoise()).apply(
            variables, x, rngs={"noise": KEY}
        ),
        linen_model.apply(chip, x),
        rtol=1e-4,
        atol=1e-5,
    )


def test_einsum_given_its_equation_at_call_time_needs_a_layout():
    net = nnx.Sequential(fj.nnx.FusionEinsum(None, (3, 6), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="layers/0/kernel.*einsum_str"):
        program_params(net, None, noise=None)
    layouts = {("layers", 0, "kernel"): KernelAxes.einsum("ab,bc->ac")}
    chip = program_params(net, KEY, noise=OffsetNoise(), layouts=layouts)
    np.testing.assert_array_equal(
        chip.layers[0].kernel[...],
        program_kernel(net.layers[0].kernel[...], KEY, noise=OffsetNoise()),
    )


def test_fusionize_replaces_a_shared_layer_everywhere_once():
    shared = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
    net = nnx.Sequential(shared, nnx.relu, shared)
    fused = fj.nnx.fusionize(net, noise=None)
    assert type(fused.layers[0]) is fj.nnx.FusionLinear
    assert fused.layers[0] is fused.layers[2]  # still one layer, programmed once per call
    assert net.layers[0] is shared and type(shared) is nnx.Linear
    with pytest.raises(TypeError, match="inside a model"):
        fj.nnx.fusionize(shared)


@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_transposed_convolutions_one_row_per_output_channel(transpose_kernel):
    """nnx/nn.ConvTranspose: one chip row per output channel, wherever Flax stores it.

    With ``transpose_kernel=True`` Flax stores ``[*window, out, in]``: reading the
    last axis as the output would program rows across output channels (3 in, 3 out:
    the shapes fit either way, so only the scale check tells). fusionize converts
    the layer in both APIs, and its training call is the plain layer on the kernel
    as program_params programs it.
    """
    x = normal((2, 5, 3), 3)
    plain = nnx.Sequential(
        nnx.ConvTranspose(
            3, 3, (2,), strides=2, transpose_kernel=transpose_kernel, rngs=nnx.Rngs(0)
        )
    )
    axes = KernelAxes.conv(1, transpose_kernel=transpose_kernel)
    assert fj.nnx.kernel_layouts(plain) == {("layers", 0, "kernel"): axes}
    assert axes.outputs == ((1,) if transpose_kernel else (2,))
    # Scaling one output channel scales its programmed weights only (OffsetNoise: its
    # offset is absolute, so each row's result depends on that row's own scale).
    index = (slice(None), 1, slice(None)) if transpose_kernel else (slice(None), slice(None), 1)
    scaled = nnx.clone(plain)
    scaled.layers[0].kernel[...] = scaled.layers[0].kernel[...].at[index].multiply(4.0)
    base = program_params(plain, KEY, noise=OffsetNoise(), g_max=20.0).layers[0].kernel[...]
    got = program_params(scaled, KEY, noise=OffsetNoise(), g_max=20.0).layers[0].kernel[...]
    assert_only_row_scaled(base, got, index, 4.0)

    fused = fj.nnx.fusionize(plain, noise=OffsetNoise(), rngs=nnx.Rngs(noise=0))
    assert type(fused.layers[0]) is fj.nnx.FusionConvTranspose
    expected = program_params(plain, KEY, noise=OffsetNoise())(x)
    np.testing.assert_allclose(fused(x), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(fused(x), plain(x), atol=1e-3)
    fused.eval()
    np.testing.assert_array_equal(fused(x), plain(x))
    # A masked layer: masked-out weights (made huge here) are not on the chip, neither in
    # the converted layer nor in program_params' copy, so they set no row's scale.
    mask = jnp.ones((2, 3, 3)).at[0].set(0.0)
    masked = nnx.Sequential(
        nnx.ConvTranspose(
            3, 3, (2,), strides=2, transpose_kernel=transpose_kernel, mask=mask, rngs=nnx.Rngs(0)
        )
    )
    masked.layers[0].kernel[...] = masked.layers[0].kernel[...].at[0].multiply(100.0)
    fused = fj.nnx.fusionize(masked, noise=OffsetNoise(), rngs=nnx.Rngs(noise=0))
    chip = program_params(masked, KEY, noise=OffsetNoise())
    np.testing.assert_allclose(fused(x), chip(x), rtol=1e-4, atol=1e-5)
    zeroed = nnx.clone(plain)  # the same layer with those weights 0 instead of masked
    zeroed.layers[0].kernel[...] = zeroed.layers[0].kernel[...].at[0].set(0.0)
    np.testing.assert_allclose(
        chip(x), program_params(zeroed, KEY, noise=OffsetNoise())(x), rtol=1e-4, atol=1e-5
    )

    # Linen: the layer's axes, the interceptor, and the drop-in layer (same names, values).
    layer = functools.partial(nn.ConvTranspose, 3, (2,), (2,), transpose_kernel=transpose_kernel)
    linen_model = nn.Sequential([layer()])
    variables = linen_model.init(jax.random.key(0), x)
    layouts = fj.linen.kernel_layouts(linen_model, x)
    assert layouts == {("params", "layers_0", "kernel"): axes}
    chip = program_params(variables, KEY, noise=OffsetNoise(), layouts=layouts)
    expected = linen_model.apply(chip, x)
    got = fj.linen.fusionize(linen_model, noise=OffsetNoise()).apply(
        variables, x, rngs={"noise": KEY}
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    drop_in = fj.linen.FusionConvTranspose(
        3, (2,), (2,), transpose_kernel=transpose_kernel, noise=OffsetNoise()
    )
    single = nn.ConvTranspose(3, (2,), (2,), transpose_kernel=transpose_kernel)
    own = drop_in.init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, own, single.init(jax.random.key(0), x))
    layer_chip = program_params(own, KEY, noise=OffsetNoise(), layouts={("params", "kernel"): axes})
    np.testing.assert_allclose(
        drop_in.apply(own, x, rngs={"noise": KEY}),
        single.apply(layer_chip, x),
        rtol=1e-4,
        atol=1e-5,
    )


def test_transposed_kernel_layout_of_unequal_channels():
    # 3 in, 5 out, transpose_kernel=True: [window, out, in] = (2, 5, 3). Read as
    # [window, in, out] this shape was refused; it is the layer's own shape.
    up = nnx.ConvTranspose(3, 5, (2,), transpose_kernel=True, rngs=nnx.Rngs(0))
    assert up.kernel.shape == (2, 5, 3)
    layouts = fj.nnx.kernel_layouts(nnx.Sequential(up))
    assert layouts[("layers", 0, "kernel")] == KernelAxes.conv(1, transpose_kernel=True)
    up = fj.nnx.FusionConvTranspose(
        3, 5, (2,), transpose_kernel=True, noise=OffsetNoise(), rngs=nnx.Rngs(0)
    )
    np.testing.assert_array_equal(
        up.programmed_kernel(KEY),
        program_kernel(
            up.kernel[...], KEY, axes=layouts[("layers", 0, "kernel")], noise=OffsetNoise()
        ),
    )


class _OwnLinear(nnx.Linear):
    """A subclass of a known layer: it may compute differently (here: it does not)."""


class _OwnKernel(nnx.Module):
    def __init__(self):
        self.kernel = nnx.Param(jnp.eye(3))

    def __call__(self, x):
        return x @ self.kernel


def test_fusionize_never_leaves_a_layer_with_a_kernel_digital_silently():
    """A layer with a kernel fusionize cannot convert is refused by name; `where` keeps
    any layer digital on purpose, also a convertible one."""
    net = nnx.Sequential(
        nnx.Linear(3, 3, rngs=nnx.Rngs(0)), _OwnLinear(3, 3, rngs=nnx.Rngs(1)), _OwnKernel()
    )
    # Every such layer in one error, each with its path and why.
    with pytest.raises(
        TypeError,
        match=r"(?s)cannot convert 2 layer.*layers/1: _OwnLinear \(a subclass of nnx.Linear"
        r".*layers/2: _OwnKernel \(no Fusion counterpart",
    ):
        fj.nnx.fusionize(net, noise=None)
    with pytest.raises(TypeError, match=r"the model: _OwnKernel"):
        fj.nnx.fusionize(_OwnKernel(), noise=None)
    paths = [("layers", 1), ("layers", 2)]
    kept = fj.nnx.fusionize(net, noise=None, where=lambda path, layer: path not in paths)
    assert [type(layer) for layer in kept.layers] == [fj.nnx.FusionLinear, _OwnLinear, _OwnKernel]
    digital = fj.nnx.fusionize(net, noise=None, where=lambda path, layer: False)
    assert [type(layer) for layer in digital.layers] == [nnx.Linear, _OwnLinear, _OwnKernel]
    with pytest.raises(TypeError, match="layers/2: _OwnKernel"):
        fj.nnx.fusionize(net, noise=None, where=lambda path, layer: path != ("layers", 1))
    # A model that already holds Fusion layers: they stay as they are, nothing is refused.
    again = fj.nnx.fusionize(kept, noise=None, where=lambda path, layer: path not in paths)
    assert [type(layer) for layer in again.layers] == [type(layer) for layer in kept.layers]
    assert again.layers[0].kernel[...] is kept.layers[0].kernel[...]


def test_linen_fusionize_never_leaves_a_layer_with_a_kernel_digital_silently():
    class OwnDense(nn.Dense):
        pass

    class OwnKernel(nn.Module):
        features: int

        @nn.compact
        def __call__(self, x):
            return x @ self.param("kernel", nn.initializers.ones, (x.shape[-1], self.features))

    class Net(nn.Module):
        own: type = OwnDense

        @nn.compact
        def __call__(self, x):
            x = fj.linen.FusionDense(6, noise=None)(x)  # programs itself: not refused
            return self.own(6)(nn.Dense(6)(x))

    x = jnp.ones((2, 3))
    for own, name in ((OwnDense, "OwnDense_0"), (OwnKernel, "OwnKernel_0")):
        variables = Net(own).init(jax.random.key(0), x)
        chip = fj.linen.fusionize(Net(own), noise=OffsetNoise())
        with pytest.raises(TypeError, match=f"fusionize: {name} is a {own.__name__} with a kernel"):
            chip.apply(variables, x, rngs={"noise": KEY})
        kept = fj.linen.fusionize(
            Net(own), noise=OffsetNoise(), where=lambda path, layer, name=name: path != (name,)
        )
        # The Dense between is programmed, the kept layer digital: as programming
        # that one kernel (and the FusionDense's, noise-free) with program_params.
        expected = program_params(
            variables,
            KEY,
            noise=OffsetNoise(),
            where=lambda path, leaf: path == ("params", "Dense_1", "kernel"),
        )
        mixed = Net(own).apply(expected, x)
        # where keeps a plain layer digital too.
        none = fj.linen.fusionize(Net(own), noise=OffsetNoise(), where=lambda path, layer: False)
        np.testing.assert_array_equal(
            none.apply(variables, x, rngs={"noise": KEY}), Net(own).apply(variables, x)
        )
        np.testing.assert_allclose(
            kept.apply(variables, x, rngs={"noise": KEY}), mixed, rtol=1e-5, atol=1e-6
        )
        assert not np.allclose(mixed, Net(own).apply(variables, x))


def test_linen_fusionize_leaves_fusion_dot_general_projections_to_themselves():
    """README's attention recipe (FusionDotGeneral injected) under fusionize: those projections
    program themselves (once), the plain Dense is programmed by the interceptor."""
    chip_dot = functools.partial(fj.linen.FusionDotGeneral, noise=OffsetNoise())

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            attention = nn.MultiHeadDotProductAttention(
                2, qkv_dot_general_cls=chip_dot, out_dot_general_cls=chip_dot
            )
            return nn.Dense(3)(attention(x))

    x = normal((1, 5, 6), 2)
    variables = Net().init(jax.random.key(0), x)
    got = fj.linen.fusionize(Net(), noise=OffsetNoise()).apply(variables, x, rngs={"noise": KEY})
    dense_only = program_params(
        variables,
        KEY,
        noise=OffsetNoise(),
        where=lambda path, leaf: path == ("params", "Dense_0", "kernel"),
    )
    expected = Net().apply(dense_only, x, rngs={"noise": KEY})
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, Net().apply(variables, x, rngs={"noise": KEY}))


def test_linen_fusionize_passes_the_models_own_deterministic_through():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, deterministic):
            return nn.Dense(3)(nn.Dropout(0.5)(nn.Dense(6)(x), deterministic=deterministic))

    x = jnp.ones((2, 3))
    variables = Net().init(jax.random.key(0), x, True)
    fused = fj.linen.fusionize(Net(), noise=None)
    rngs = {"dropout": jax.random.key(1)}
    dropped = fused.apply(variables, x, deterministic=False, rngs=rngs)
    plain_dropped = Net().apply(variables, x, deterministic=False, rngs=rngs)
    np.testing.assert_allclose(dropped, plain_dropped, rtol=1e-4, atol=1e-5)  # noise-free chip
    assert not np.allclose(dropped, fused.apply(variables, x, deterministic=True), atol=1e-3)
    digital = fused.apply(variables, x, deterministic=False, rngs=rngs, chip_deterministic=True)
    np.testing.assert_array_equal(digital, plain_dropped)


def test_traced_settings_on_stacked_layers_are_refused_by_name(stacked_model):
    """nnx.scan / nnx.vmap over a stack map every array of its state over the layer axis,
    which a traced scalar setting lacks: a clear error (was an IndexError inside the scan);
    a concrete value, and the sweep through program_params, work."""
    fused = fj.nnx.fusionize(stacked_model, noise=OffsetNoise(), rngs=nnx.Rngs(noise=0))
    assert nnx.view(fused, g_max=20.0).blocks.linear.g_max == 20.0
    for name in ("g_max", "t_inference"):
        with pytest.raises(ValueError, match=f"traced {name} cannot be set on a FusionLinear"):
            jax.jit(lambda g, name=name: nnx.view(fused, **{name: g}).blocks.linear.g_max)(20.0)
