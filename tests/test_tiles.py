"""Chip tiles: split sizes, tile order and files against aihwkit 1.1.0, tile-wise programming.

The fixtures under tests/fixtures/aihwkit were written by aihwkit 1.1.0
(``make_fixtures.py`` there); these tests read only those files.
"""

import gzip
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from arrays import normal
from noise_doubles import AbsoluteNoise, OffsetNoise

import fusion_jax as fj
from fusion_jax import chip_file, layout, tiles
from fusion_jax.tiles import split_sizes

FIXTURES = Path(__file__).parent / "fixtures" / "aihwkit"
MODELS = ("single_784x10", "linear_600x1100", "multi")
# The read-back model of the fixtures: g -> 0.9 g + 0.1, deterministic per device.
READBACK = OffsetNoise(gain=0.9, offset=-0.1)
K = jax.random.key(0)  # unused by READBACK, required when noise is on


def load(model):
    """The fixture's layers (torch shapes, float32), header and tile sizes."""
    with np.load(FIXTURES / f"{model}.npz") as z:
        names = [str(n) for n in z["names"]]
        layers, info = {}, {}
        for i, name in enumerate(names):
            w = z[f"weights_{i}"].astype(np.float32)
            layers[name] = w.reshape(tuple(z[f"shape_{i}"]))
            info[name] = {
                "rows": w,
                "in_sizes": tuple(int(v) for v in z[f"in_sizes_{i}"]),
                "out_sizes": tuple(int(v) for v in z[f"out_sizes_{i}"]),
                "imported": z[f"imported_{i}"] if f"imported_{i}" in z else None,
            }
        ids = [int(v) for v in z["ids"]]
        classes = [str(c) for c in z["classes"]]
    return layers, ids, classes, info


def fixture_file(name, tmp_path):
    """A gzipped fixture CSV, decompressed into tmp_path."""
    path = tmp_path / name
    path.write_bytes(gzip.decompress((FIXTURES / f"{name}.gz").read_bytes()))
    return path


def group_of(shape):
    return int(np.prod(shape[2:]))


# --- split sizes and tile order ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "max_size", "expected"),
    [
        (784, 512, (392, 392)),
        (1100, 512, (367, 367, 366)),
        (600, 512, (300, 300)),
        (512, 512, (512,)),
        (513, 512, (257, 256)),
        (10, 512, (10,)),
        (784, 0, (784,)),
        (7, 3, (3, 2, 2)),
    ],
)
def test_split_sizes(size, max_size, expected):
    assert split_sizes(size, max_size) == expected
    assert sum(expected) == size


def test_split_sizes_of_conv_channels():
    # 57 channels of 3x3: at most 512 // 9 = 56 channels per tile -> 29 + 28 channels.
    assert split_sizes(57 * 9, 512, group_size=9) == (261, 252)
    assert split_sizes(56 * 9, 512, group_size=9) == (504,)
    assert split_sizes(57 * 9, 0, group_size=9) == (513,)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((10, -1), {}, "max_size"),
        ((0, 512), {}, "size"),
        ((10, 512), {"group_size": 3}, "multiple"),
        ((5 * 600, 512), {"group_size": 600}, "does not fit"),
    ],
)
def test_split_sizes_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_sizes(*args, **kwargs)
    with pytest.raises(TypeError, match="max_size"):
        split_sizes(10, 2.5)


@pytest.mark.parametrize("model", MODELS)
def test_split_sizes_match_aihwkit(model):
    layers, _, _, info = load(model)
    for name, w in layers.items():
        rows = info[name]["rows"]
        assert (
            split_sizes(rows.shape[1], 512, group_size=group_of(w.shape)) == info[name]["in_sizes"]
        )
        assert split_sizes(rows.shape[0], 512) == info[name]["out_sizes"]


@pytest.mark.parametrize("model", MODELS)
def test_tile_order_of_aihwkit_files(model, tmp_path):
    """Cut aihwkit's line by our tile slices: each piece is that tile converted on its own."""
    layers, _, _, info = load(model)
    raw = chip_file.read_chip_file(fixture_file(f"{model}.csv", tmp_path), max_input_size=0)
    for name, w in layers.items():
        rows = info[name]["rows"]
        line = raw.layers[name].ravel()
        start = 0
        slices = tiles.tile_slices(rows.shape, group_size=group_of(w.shape))
        assert len(slices) == len(info[name]["in_sizes"]) * len(info[name]["out_sizes"])
        for r, c in slices:
            g, _ = fj.convert_to_conductances(rows[r, c], 40.0)
            piece = line[start : start + g.size]
            np.testing.assert_array_equal(piece.astype(np.float32), np.asarray(g).ravel())
            start += g.size
        assert start == line.size


def test_file_order_inverts():
    order = tiles.file_order((7, 10), max_input_size=4, max_output_size=3)
    assert sorted(order.tolist()) == list(range(70))
    m = np.arange(70.0).reshape(7, 10)
    line = m.ravel()[order]
    # First tile: rows 0-2 (outputs 7 -> 3, 2, 2), columns 0-3 (inputs 10 -> 4, 3, 3).
    np.testing.assert_array_equal(line[:12], m[0:3, 0:4].ravel())
    back = np.empty(70)
    back[order] = line
    np.testing.assert_array_equal(back.reshape(7, 10), m)


# --- files interchange with aihwkit -----------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_export_is_byte_identical_to_aihwkit(model, tmp_path):
    layers, ids, classes, _ = load(model)
    path = tmp_path / "ours.csv"
    data, params = fj.fusion_export(layers, path, 40, ids=ids, classes=classes)
    expected = gzip.decompress((FIXTURES / f"{model}.csv.gz").read_bytes())
    assert path.read_bytes() == expected
    assert params.max_input_size == 512 and params.max_output_size == 512
    for name, w in layers.items():  # the header keeps the layer's full height and width
        i = data.names.index(name)
        assert (data.heights[i], data.widths[i]) == (w.shape[0], int(np.prod(w.shape[1:])))


def test_untiled_export_differs_from_aihwkit(tmp_path):
    """The fixtures do test the tiles: without them the 784-input layer's values differ."""
    layers, ids, classes, _ = load("single_784x10")
    fj.fusion_export(layers, tmp_path / "a.csv", ids=ids, classes=classes, max_input_size=0)
    ours = chip_file.read_chip_file(tmp_path / "a.csv", max_input_size=0).layers[""]
    theirs = chip_file.read_chip_file(fixture_file("single_784x10.csv", tmp_path)).layers[""]
    assert np.abs(ours - theirs).max() > 1.0


@pytest.mark.parametrize("model", ["single_784x10", "multi"])
def test_import_of_aihwkit_readback_matches_aihwkit(model, tmp_path):
    layers, ids, classes, info = load(model)
    _, params = fj.fusion_export(layers, tmp_path / "ours.csv", ids=ids, classes=classes)
    readback = fixture_file(f"{model}_readback.csv", tmp_path)
    imported = fj.fusion_import(readback, layers, params)
    for name, w in layers.items():
        assert imported[name].shape == w.shape
        expected = info[name]["imported"]
        got = np.asarray(imported[name]).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * np.abs(expected).max())


def test_import_reads_the_quoted_empty_name(tmp_path):
    """A single-layer model: aihwkit names its layer "" and writes it quoted."""
    path = fixture_file("single_784x10_readback.csv", tmp_path)
    assert path.read_bytes().split(b"\n")[5] == b'""\r'
    chip = chip_file.read_chip_file(path)
    assert chip.names == ("",)
    layers, _, _, info = load("single_784x10")
    # Plain params (no FusionExport): the default tile sizes are the Composer's.
    imported = fj.fusion_import(path, layers, {"": fj.FusionParams(jnp.asarray(layers[""]))})
    expected = info[""]["imported"]
    np.testing.assert_allclose(imported[""], expected, atol=2e-6 * np.abs(expected).max())
    # Read as one tile, the same file imports wrong.
    untiled = fj.fusion_import(
        path, layers, {"": {"original_weights": layers[""]}}, max_input_size=0
    )
    assert np.abs(np.asarray(untiled[""]) - expected).max() > 0.05 * np.abs(expected).max()


def test_export_writes_the_empty_name_quoted(tmp_path):
    layers, ids, classes, _ = load("single_784x10")
    fj.fusion_export(layers, tmp_path / "m.csv", ids=ids, classes=classes)
    assert (tmp_path / "m.csv").read_bytes().split(b"\n")[5] == b'""\r'
    assert chip_file.read_chip_file(tmp_path / "m.csv").names == ("",)


def test_import_of_aihwkit_export_with_output_splits(tmp_path):
    """1100 outputs in 3 splits, 600 inputs in 2: the unchanged file gives the weights back."""
    layers, _, _, _ = load("linear_600x1100")
    path = fixture_file("linear_600x1100.csv", tmp_path)
    imported = fj.fusion_import(path, layers, {"0": fj.FusionParams(jnp.asarray(layers["0"]))})
    np.testing.assert_allclose(imported["0"], layers["0"], atol=5e-6)


def test_import_rejects_other_tile_sizes_than_the_export(tmp_path):
    layers, _, _, _ = load("single_784x10")
    _, params = fj.fusion_export(layers, tmp_path / "m.csv")
    with pytest.raises(ValueError, match="max_input_size=0 but the layers were exported"):
        fj.fusion_import(tmp_path / "m.csv", layers, params, max_input_size=0)
    with pytest.raises(ValueError, match="max_output_size"):
        fj.fusion_export(layers, tmp_path / "n.csv", max_output_size=-1)


def test_export_of_conv_channel_larger_than_a_tile_is_refused(tmp_path):
    w = np.ones((2, 3, 30, 30), np.float32)  # 900 inputs per channel
    with pytest.raises(ValueError, match="layer 'conv'.*does not fit"):
        fj.fusion_export({"conv": w}, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


# --- tile-wise programming --------------------------------------------------------------------


def test_input_splits_program_each_tile_on_its_own():
    w = normal((5, 7))
    tiled = fj.program(w, K, noise=READBACK, max_input_size=3)  # 7 -> 3, 2, 2
    pieces = [w[:, 0:3], w[:, 3:5], w[:, 5:7]]
    expected = jnp.concatenate(
        [fj.program(p, K, noise=READBACK, max_input_size=0) for p in pieces], 1
    )
    np.testing.assert_allclose(tiled, expected, rtol=1e-6, atol=1e-7)
    untiled = fj.program(w, K, noise=READBACK, max_input_size=0)
    assert float(jnp.abs(tiled - untiled).max()) > 1e-3  # the scales changed


def test_output_splits_change_nothing(tmp_path):
    w = normal((5, 7))  # as in test_input_splits_program_each_tile_on_its_own
    base = fj.program(w, K, noise=READBACK, max_output_size=0)
    np.testing.assert_array_equal(fj.program(w, K, noise=READBACK, max_output_size=2), base)
    k = jnp.asarray(w.T)
    np.testing.assert_array_equal(
        fj.program_kernel(k, K, noise=READBACK, max_output_size=4),
        fj.program_kernel(k, K, noise=READBACK, max_output_size=0),
    )
    # Nor the file: the output tiles of one input split, each row-major, follow
    # each other as the rows of that split do.
    fj.fusion_export({"fc": w}, tmp_path / "a.csv", max_output_size=0, max_input_size=4)
    fj.fusion_export({"fc": w}, tmp_path / "b.csv", max_output_size=4, max_input_size=4)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    np.testing.assert_array_equal(
        tiles.file_order((5, 7), max_input_size=4, max_output_size=4),
        tiles.file_order((5, 7), max_input_size=4, max_output_size=0),
    )


def test_one_tile_is_the_untiled_path_even_with_random_noise():
    w = normal((4, 300))
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        fj.program(w, key, noise=AbsoluteNoise(0.5)),
        fj.program(w, key, noise=AbsoluteNoise(0.5), max_input_size=0),
    )


@pytest.mark.parametrize("gradient", ["exact", "ste"])
def test_exact_gradient_keeps_the_identity_jacobian_with_tiles(gradient):
    w = normal((3, 7), seed=2)
    # Jitted: one compile costs less CPU than the Jacobians' many eager ops.
    program = lambda v: fj.program(v, noise=None, max_input_size=3, gradient=gradient)  # noqa: E731
    jac = jax.jit(jax.jacfwd(program))(w)
    np.testing.assert_allclose(jac.reshape(21, 21), np.eye(21), atol=2e-5)
    k = normal((7, 3), seed=2)
    jac = jax.jit(jax.jacrev(lambda v: fj.program_kernel(v, noise=None, max_input_size=3)))(k)
    np.testing.assert_allclose(jac.reshape(21, 21), np.eye(21), atol=2e-5)
    np.testing.assert_allclose(fj.program_kernel(k, noise=None, max_input_size=3), k, atol=1e-6)


def test_noisy_gradient_differs_between_tile_sizes():
    """The tiles are in the gradient path too: per-tile scales change d(program)/dw."""
    w = normal((2, 6), seed=4)
    loss = lambda v, m: jnp.sum(fj.program(v, K, noise=READBACK, max_input_size=m) ** 2)  # noqa: E731
    grad = jax.jit(jax.grad(loss), static_argnums=1)  # cheaper in CPU than the eager ops
    g3, g0 = grad(w, 3), grad(w, 0)
    assert np.all(np.isfinite(g3)) and float(jnp.abs(g3 - g0).max()) > 1e-4


def test_layouts_agree_dense():
    w = normal((3, 784), seed=5)  # [out, in]: inputs 392, 392
    rows = fj.program(w, K, noise=READBACK)
    kernel = fj.program_kernel(w.T, K, noise=READBACK)
    np.testing.assert_allclose(layout.kernel_to_rows(kernel), rows, rtol=2e-6, atol=1e-6)


def test_layouts_agree_conv_on_channel_boundaries():
    kernel = normal((3, 3, 57, 6), seed=6)  # 513 inputs: 29 + 28 channels
    rows = layout.kernel_to_rows(kernel)
    programmed = layout.kernel_to_rows(fj.program_kernel(kernel, K, noise=READBACK))
    split = 29 * 9
    expected = jnp.concatenate(
        [
            fj.program(rows[:, :split], K, noise=READBACK, max_input_size=0),
            fj.program(rows[:, split:], K, noise=READBACK, max_input_size=0),
        ],
        axis=1,
    )
    np.testing.assert_allclose(programmed, expected, rtol=2e-6, atol=1e-6)


def test_stacked_kernels_are_tiled_layer_by_layer():
    stack = normal((3, 7, 2), seed=7)  # 3 scanned [in=7, out=2] layers
    axes = layout.KernelAxes.dense().stacked()
    out = fj.program_kernel(stack, K, axes=axes, noise=READBACK, max_input_size=3)
    for i in range(3):
        expected = fj.program_kernel(stack[i], K, noise=READBACK, max_input_size=3)
        np.testing.assert_allclose(out[i], expected, rtol=2e-6, atol=1e-6)
    untiled = fj.program_kernel(stack, K, axes=axes, noise=READBACK, max_input_size=0)
    assert float(jnp.abs(out - untiled).max()) > 1e-3
    scaled = stack.at[1].multiply(100.0)  # scaling one layer leaves the others alone
    out2 = fj.program_kernel(scaled, K, axes=axes, noise=READBACK, max_input_size=3)
    np.testing.assert_array_equal(out2[0], out[0])
    np.testing.assert_array_equal(out2[2], out[2])


def test_general_kernel_splits_its_flattened_inputs():
    """An attention output projection [heads, head_dim, out]: its 2 * 300 inputs split flat."""
    kernel = normal((2, 300, 3), seed=10)
    axes = layout.KernelAxes.general(n_inputs=2, n_outputs=1)
    assert split_sizes(600, 512) == (300, 300)
    out = fj.program_kernel(kernel, K, axes=axes, noise=READBACK)
    for h in range(2):  # each head's inputs are one tile here
        expected = fj.program_kernel(kernel[h], K, noise=READBACK)
        np.testing.assert_allclose(out[h], expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("model", ["single_784x10", "multi"])
def test_simulation_equals_export_model_import(model, tmp_path):
    """A per-device model applied in program_kernel == export, the model on the file, import."""
    layers, ids, classes, _ = load(model)
    path = tmp_path / "target.csv"
    _, params = fj.fusion_export(layers, path, ids=ids, classes=classes)
    target = chip_file.read_chip_file(path, max_input_size=0)  # the file's values in file order
    readback = {
        name: np.asarray(
            READBACK.sample(jnp.asarray(g, jnp.float32), None, g_max=40.0, t_inference=0.0)
        )
        for name, g in target.layers.items()
    }
    read_path = tmp_path / "readback.csv"
    chip_file.write_chip_file(
        read_path,
        chip_file.ChipFile.from_layers(readback, ids=target.ids, classes=target.classes),
        max_input_size=0,
    )
    imported = fj.fusion_import(read_path, layers, params)
    for name, w in layers.items():
        # The Flax kernel of the same layer: [*spatial, in, out].
        kernel = jnp.transpose(jnp.asarray(w), (*range(2, w.ndim), 1, 0))
        simulated = fj.program_kernel(kernel, K, noise=READBACK)
        np.testing.assert_allclose(
            layout.kernel_to_rows(simulated),
            np.asarray(imported[name]).reshape(w.shape[0], -1),
            rtol=0,
            atol=3e-6 * np.abs(w).max(),
        )


def test_program_params_threads_tile_sizes():
    params = {"params": {"Dense_0": {"kernel": normal((784, 3), seed=8)}}}
    tiled = fj.program_params(params, K, noise=READBACK)
    untiled = fj.program_params(params, K, noise=READBACK, max_input_size=0)
    k = params["params"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(
        tiled["params"]["Dense_0"]["kernel"], fj.program_kernel(k, K, noise=READBACK)
    )
    assert (
        float(
            jnp.abs(
                tiled["params"]["Dense_0"]["kernel"] - untiled["params"]["Dense_0"]["kernel"]
            ).max()
        )
        > 1e-4
    )
    with pytest.raises(ValueError, match="max_input_size"):
        fj.program_params(params, None, noise=None, max_input_size=-2)


def test_converter_stays_one_tile():
    w = normal((2, 784), seed=9)
    g, _ = fj.FusionConductanceConverter(40).convert_to_conductances(w)
    np.testing.assert_array_equal(np.asarray(g[0]), np.asarray(fj.convert_to_conductances(w)[0]))
    assert int((np.asarray(g[0]) >= 39.99).sum()) == 2  # one g_max per row, not per tile


# --- command line -----------------------------------------------------------------------------


def save_weights(model, path):
    layers, ids, classes, info = load(model)
    payload = {f"layer_{n}": w for n, w in layers.items()}
    np.savez(
        path,
        layer_names=np.array(list(layers)),
        layer_ids=np.array(ids),
        layer_classes=np.array(classes),
        **payload,
    )
    return layers, info


def test_cli_export_and_import_of_aihwkit_files(capsys, tmp_path):
    from fusion_jax.cli import main

    save_weights("multi", tmp_path / "multi.npz")
    assert main(["export", str(tmp_path / "multi.npz"), str(tmp_path / "multi.csv")]) == 0
    expected = gzip.decompress((FIXTURES / "multi.csv.gz").read_bytes())
    assert (tmp_path / "multi.csv").read_bytes() == expected
    args = ["export", str(tmp_path / "multi.npz"), str(tmp_path / "flat.csv")]
    assert main([*args, "--max-input-size", "0"]) == 0
    assert (tmp_path / "flat.csv").read_bytes() != expected

    layers, info = save_weights("single_784x10", tmp_path / "single.npz")
    readback = fixture_file("single_784x10_readback.csv", tmp_path)
    out = tmp_path / "back.npz"
    assert main(["import", str(readback), str(tmp_path / "single.npz"), str(out)]) == 0
    with np.load(out) as back:
        expected = info[""]["imported"]
        np.testing.assert_allclose(back["layer_"], expected, atol=2e-6 * np.abs(expected).max())
    capsys.readouterr()
    assert main([*args, "--max-output-size", "-1"]) != 0
    assert "invalid tile size" in capsys.readouterr().err


@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_flax_conv_export_and_simulation_share_tiles(tmp_path, transpose_kernel):
    """A Flax conv of 57 channels x 3x3 = 513 inputs: 29 + 28 whole channels in both paths.

    Also for a transposed conv built with ``transpose_kernel=True`` (kernel
    ``[*window, out, in]``): its layout, given to the export and the import, makes
    the file's rows its output channels, as the simulation programs them.
    """
    if transpose_kernel:
        kernel = normal((3, 3, 6, 57), seed=11)
        axes = layout.KernelAxes.conv(2, transpose_kernel=True)
        layouts = {"conv/kernel": axes}
    else:
        kernel = normal((3, 3, 57, 6), seed=11)
        axes, layouts = None, None
    params = {"params": {"conv": {"kernel": kernel}}}
    layers = layout.flax_to_layers(params, conv_window=True, layouts=layouts)
    assert layers["conv"].shape == (6, 57, 3, 3)
    path = tmp_path / "conv.csv"
    data, exported = fj.fusion_export(layers, path)
    target = chip_file.read_chip_file(path, max_input_size=0)
    readback = {
        n: np.asarray(READBACK.sample(jnp.asarray(g), None, g_max=40.0, t_inference=0.0))
        for n, g in target.layers.items()
    }
    chip_file.write_chip_file(path, chip_file.ChipFile.from_layers(readback), max_input_size=0)
    imported = fj.fusion_import(path, layers, exported)
    imported = layout.layers_to_flax(imported, params, layouts=layouts)
    simulated = fj.program_kernel(kernel, K, axes=axes, noise=READBACK)
    atol = 3e-6 * float(jnp.abs(kernel).max())
    np.testing.assert_allclose(imported["params"]["conv"]["kernel"], simulated, atol=atol)
    # Flattened, the same conv is split as 257 + 256 inputs: other tiles, other values.
    flat = layout.flax_to_layers(params, layouts=layouts)
    fj.fusion_export(flat, tmp_path / "flat.csv")
    g_flat = chip_file.read_chip_file(tmp_path / "flat.csv").layers["conv"]
    assert np.abs(g_flat - data.layers["conv"]).max() > 1.0


# --- layers and sweeps ------------------------------------------------------------------------


def test_nnx_layers_carry_tile_sizes():
    from flax import nnx

    layer = fj.nnx.FusionLinear(784, 3, noise=READBACK, max_input_size=0, rngs=nnx.Rngs(0))
    kernel = layer.kernel[...]
    np.testing.assert_array_equal(
        layer.programmed_kernel(K), fj.program_kernel(kernel, K, noise=READBACK, max_input_size=0)
    )
    tiled = fj.nnx.FusionLinear(784, 3, noise=READBACK, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(
        tiled.programmed_kernel(K), fj.program_kernel(kernel, K, noise=READBACK)
    )
    # program_params reads each layer's tile sizes, unless the call gives them.
    net = nnx.Sequential(layer)
    own = fj.program_params(net, K).layers[0].kernel[...]
    np.testing.assert_array_equal(own, layer.programmed_kernel(K))
    given = fj.program_params(net, K, max_input_size=512).layers[0].kernel[...]
    np.testing.assert_array_equal(given, tiled.programmed_kernel(K))
    converted = fj.nnx.fusionize(
        nnx.Sequential(nnx.Linear(784, 3, rngs=nnx.Rngs(0))), noise=None, max_input_size=100
    )
    assert converted.layers[0].max_input_size == 100
    with pytest.raises(ValueError, match="max_input_size"):
        fj.nnx.FusionLinear(784, 3, max_input_size=-1, rngs=nnx.Rngs(0))


def test_linen_layers_carry_tile_sizes():
    import flax.linen as nn

    x = normal((2, 784), seed=12)
    for size in (512, 0):
        model = fj.linen.FusionDense(3, noise=READBACK, max_input_size=size)
        variables = model.init(K, x)
        out = model.apply(variables, x, rngs={"noise": K})
        p = variables["params"]
        kernel = fj.program_kernel(p["kernel"], K, noise=READBACK, max_input_size=size)
        np.testing.assert_allclose(out, x @ kernel + p["bias"], rtol=1e-5, atol=1e-5)
        # fusionize: a plain nn.Dense programmed through the interceptor, same tiles.
        chip = fj.linen.fusionize(nn.Dense(3), noise=READBACK, max_input_size=size)
        out = chip.apply(variables, x, rngs={"noise": K})
        np.testing.assert_allclose(out, x @ kernel + p["bias"], rtol=1e-5, atol=1e-5)


def test_sweep_takes_tile_sizes():
    w = normal((784, 3), seed=13)
    x = normal((16, 784), seed=14)
    y = jnp.argmax(x @ w, -1)

    def run(**kw):
        return fj.sweep(
            lambda p, v: v @ p["kernel"],
            {"kernel": w},
            (x, y),
            g_max=[25.0],
            seeds=1,
            t_inference=[1.0],
            noise=READBACK,
            **kw,
        )

    assert float(run().loss[0, 0, 0]) != float(run(max_input_size=0).loss[0, 0, 0])
    with pytest.raises(ValueError, match="max_output_size"):
        run(max_output_size=-3)
