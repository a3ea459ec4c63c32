"""fusion_export / fusion_import: the reference's file, the real chip read-back, validation."""

import os
import re

import jax
import numpy as np
import pytest

import fusion_jax as fj
from fusion_jax import chip_file
from fusion_jax.fusion_io import FusionExport, fusion_export, fusion_import

TARGET = fj.datasets.lenet5_path("target_g40.csv")
PROGRAMMED = fj.datasets.lenet5_path("programmed.csv")


def lenet5_model():
    """The shipped LeNet5 layers and their header metadata, straight from weights.npz."""
    with np.load(fj.datasets.lenet5_path("weights.npz")) as npz:
        names = [str(n) for n in npz["layer_names"]]
        layers = {n: npz[f"layer_{n}"] for n in names}
        ids = [int(i) for i in npz["layer_ids"]]
        classes = [str(c) for c in npz["layer_classes"]]
    return layers, ids, classes


@pytest.fixture(scope="module")
def lenet5_export(tmp_path_factory):
    layers, ids, classes = lenet5_model()
    path = tmp_path_factory.mktemp("lenet5") / "model.csv"
    data, params = fusion_export(layers, path, g_max=40, ids=ids, classes=classes)
    return layers, path, data, params


def small_layers():
    rng = np.random.default_rng(1)
    return {
        "conv": rng.normal(size=(4, 6)).astype(np.float32),
        "fc": rng.normal(size=(3, 5)).astype(np.float32),
    }


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# --- the reference's file ---------------------------------------------------------------------


def test_lenet5_export_is_byte_identical_to_the_reference(lenet5_export):
    _, path, _, _ = lenet5_export
    assert path.read_bytes() == TARGET.read_bytes()


def test_lenet5_export_header_and_values(lenet5_export):
    """Header exact, values to float32 precision (holds even where bytes could differ)."""
    layers, _, data, params = lenet5_export
    target = chip_file.read_chip_file(TARGET)
    for field in ("ids", "classes", "counts", "heights", "widths", "names"):
        assert getattr(data, field) == getattr(target, field)
    for name in target.names:
        np.testing.assert_allclose(data.layers[name], target.layers[name], rtol=2e-7, atol=0)
    assert isinstance(params, FusionExport)
    assert list(params) == ["0", "3", "8", "10"] and params.g_max == 40.0
    np.testing.assert_array_equal(params["8"].original_weights, layers["8"])


def test_export_params_are_a_pytree(lenet5_export):
    _, _, _, params = lenet5_export
    assert len(jax.tree_util.tree_leaves(params)) == 4
    doubled = jax.tree_util.tree_map(lambda w: 2 * w, params)
    assert isinstance(doubled, FusionExport) and doubled.ids == params.ids
    np.testing.assert_allclose(doubled["10"].original_weights, 2 * params["10"].original_weights)
    total = jax.jit(lambda p: sum(q.original_weights.sum() for q in p.values()))(params)
    np.testing.assert_allclose(total, sum(params[n].original_weights.sum() for n in params))
    with pytest.raises(KeyError):
        params["nope"]


# --- the real chip read-back ------------------------------------------------------------------


def test_lenet5_readback_reconstruction(lenet5_export):
    """Import the real chip read-back and compare with the programmed weights.

    The read-back is about 0.55 x target - 0.8 uS with a spread of about 1.5 uS
    (README of the data), against RMS targets of 16-19 uS: the per-row
    least-squares gain leaves an expected relative error of about
    sqrt(1.5^2 + 0.8^2) / (0.55 * 17) ~ 0.18. The bound 0.3 leaves margin;
    dividing by the known scale (ignoring the gain) is off by ~|1 - 0.55| ~ 0.45.
    """
    layers, _, _, params = lenet5_export
    imported = fusion_import(PROGRAMMED, layers, params)
    programmed = chip_file.read_chip_file(PROGRAMMED).layers
    print("\nlayer  import  naive")
    for name, w in layers.items():
        w_hat = imported[name]
        assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
        scale = 40.0 / np.abs(w).max(axis=1, keepdims=True)
        naive = programmed[name] * np.sign(w) / scale
        err, err_naive = rel_err(w_hat, w), rel_err(naive, w)
        print(f"{name:>5}  {err:.4f}  {err_naive:.4f}")
        assert np.isfinite(err) and err < 0.3
        assert err < err_naive - 0.15


def test_import_of_the_unchanged_export_recovers_the_weights(tmp_path):
    layers = small_layers()
    path = tmp_path / "m.csv"
    _, params = fusion_export(layers, path, g_max=25)
    out = fusion_import(path, layers, params)
    assert list(out) == list(layers)
    for name in layers:
        np.testing.assert_allclose(out[name], layers[name], rtol=1e-5, atol=1e-6)


def test_import_reads_lf_files_and_plain_params(tmp_path):
    layers = small_layers()
    path = tmp_path / "m.csv"
    _, params = fusion_export(layers, path)
    path.write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    plain = {"fc": {"original_weights": layers["fc"]}, "conv": params["conv"]}
    out = fusion_import(path, layers, plain)
    for name in layers:
        np.testing.assert_allclose(out[name], layers[name], rtol=1e-5, atol=1e-6)


def test_import_in_layers_order_whatever_the_file_order(tmp_path):
    layers = small_layers()
    path = tmp_path / "m.csv"
    _, params = fusion_export(layers, path)
    reversed_layers = dict(reversed(list(layers.items())))
    out = fusion_import(path, reversed_layers, params)
    assert list(out) == ["fc", "conv"]


def test_strict_aihwkit_passes_through(tmp_path):
    layers = {"one_input": np.array([[0.5], [-2.0]], np.float32)}
    path = tmp_path / "m.csv"
    _, params = fusion_export(layers, path)
    np.testing.assert_allclose(
        fusion_import(path, layers, params)["one_input"], layers["one_input"]
    )
    strict = fusion_import(path, layers, params, strict_aihwkit=True)
    np.testing.assert_array_equal(strict["one_input"], np.zeros((2, 1)))


def test_default_and_explicit_header(tmp_path):
    layers = small_layers()
    data, _ = fusion_export(layers, tmp_path / "a.csv")
    assert data.ids == (1, 2) and data.classes == ("AnalogLinearMapped",) * 2
    data, _ = fusion_export(
        layers, tmp_path / "b.csv", ids={"fc": 9, "conv": 3}, classes=["AnalogConv2dMapped", "L"]
    )
    assert data.ids == (3, 9) and data.classes == ("AnalogConv2dMapped", "L")
    assert chip_file.read_chip_file(tmp_path / "b.csv").ids == (3, 9)


# --- export validation ------------------------------------------------------------------------


@pytest.mark.parametrize("g_max", [9.9, 40.5, -1.0])
def test_export_g_max_range(tmp_path, g_max):
    with pytest.raises(fj.ArgumentError, match="g_max value must be between 10 and 40"):
        fusion_export(small_layers(), tmp_path / "m.csv", g_max=g_max)
    assert os.listdir(tmp_path) == []


def test_export_g_max_bounds_are_allowed(tmp_path):
    for g_max in (10, 40):
        data, _ = fusion_export(small_layers(), tmp_path / "m.csv", g_max=g_max)
        assert max(float(v.max()) for v in data.layers.values()) == g_max


def test_export_g_max_must_be_scalar(tmp_path):
    with pytest.raises(fj.ArgumentError, match="g_max must be a scalar"):
        fusion_export(small_layers(), tmp_path / "m.csv", g_max=[20.0, 30.0])


@pytest.mark.parametrize(("name", "what"), [("a,b", "comma"), ("a\nb", "line feed")])
def test_export_bad_names(tmp_path, name, what):
    with pytest.raises(ValueError, match=f"layer {re.escape(repr(name))}.*contains a {what}"):
        fusion_export({name: np.ones((2, 2))}, tmp_path / "m.csv")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("shape", [(4,), ()])  # 3-D and more: a conv [out, in, *spatial]
def test_export_weights_must_be_2d(tmp_path, shape):
    layers = {"ok": np.ones((2, 2)), "bad": np.ones(shape)}
    with pytest.raises(ValueError, match=r"layer 'bad': weights must be 2-D \[out, in\]"):
        fusion_export(layers, tmp_path / "m.csv")
    assert os.listdir(tmp_path) == []


def test_export_nan_weights_name_the_layer(tmp_path):
    w = np.ones((3, 4))
    w[2, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"layer 'fc': weights contain 1 NaN or Inf value in row \[2\]"
    ):
        fusion_export({"ok": np.ones((1, 2)), "fc": w}, tmp_path / "m.csv")
    assert os.listdir(tmp_path) == []


def test_export_refuses_more_weights_than_devices(tmp_path):
    layers = {"big": np.zeros((1024, 1024), np.float32), "extra": np.ones((2, 3), np.float32)}
    with pytest.raises(ValueError, match=r"1,048,582 devices.*chip has 1,048,576 \(512 x 2048\)"):
        fusion_export(layers, tmp_path / "m.csv")
    assert os.listdir(tmp_path) == []


def test_export_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    real = chip_file._format_values
    calls = []

    def failing(values):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("no space left on device")
        return real(values)

    monkeypatch.setattr(chip_file, "_format_values", failing)
    with pytest.raises(OSError, match="no space left"):
        fusion_export(small_layers(), tmp_path / "m.csv")
    assert len(calls) == 2 and os.listdir(tmp_path) == []


def test_export_not_a_mapping(tmp_path):
    with pytest.raises(TypeError, match="layers must be a mapping"):
        fusion_export([np.ones((2, 2))], tmp_path / "m.csv")


# --- import validation ------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path):
    layers = small_layers()
    path = tmp_path / "m.csv"
    _, params = fusion_export(layers, path, ids=[5, 6], classes=["AnalogConv2dMapped", "Lin"])
    return layers, path, params


def _edit(path, line_index, new_line):
    lines = path.read_bytes().decode().replace("\r\n", "\n").split("\n")
    lines[line_index] = new_line
    path.write_text("\n".join(lines))


def test_import_ids_mismatch(exported):
    layers, path, params = exported
    _edit(path, 0, "5,7")
    with pytest.raises(ValueError, match=r"layer 'fc': header mismatch in ids: the file has 7, "):
        fusion_import(path, layers, params)
    # without the export's header, ids are not checked
    fusion_import(path, layers, dict(params.items()))


def test_import_classes_mismatch(exported):
    layers, path, params = exported
    _edit(path, 1, "AnalogLinearMapped,Lin")
    with pytest.raises(
        ValueError,
        match="layer 'conv': header mismatch in classes: the file has 'AnalogLinearMapped', "
        "expected 'AnalogConv2dMapped'",
    ):
        fusion_import(path, layers, params)


def test_import_shape_mismatch_names_counts_heights_widths(exported, tmp_path):
    layers, _, params = exported
    other = tmp_path / "other.csv"
    fusion_export(
        {"conv": np.ones((3, 8)), "fc": layers["fc"]},
        other,
        ids=[5, 6],
        classes=["AnalogConv2dMapped", "Lin"],
    )
    with pytest.raises(
        ValueError,
        match=r"layer 'conv': header mismatch in heights: the file has "
        r"3, expected 4; widths: the file has 8, expected 6\.",
    ):
        fusion_import(other, layers, params)
    fusion_export(
        {"conv": np.ones((4, 5)), "fc": layers["fc"]},
        other,
        ids=[5, 6],
        classes=["AnalogConv2dMapped", "Lin"],
    )
    with pytest.raises(
        ValueError,
        match=r"counts: the file has 20, expected 24; widths: the file "
        r"has 5, expected 6",
    ):
        fusion_import(other, layers, params)


def test_import_missing_and_extra_layers(exported, tmp_path):
    layers, path, params = exported
    only_conv = tmp_path / "conv.csv"
    fusion_export({"conv": layers["conv"]}, only_conv, ids=[5], classes=["AnalogConv2dMapped"])
    with pytest.raises(ValueError, match=r"layer\(s\) \['fc'\] missing from the file"):
        fusion_import(only_conv, layers, params)
    with pytest.raises(ValueError, match=r"holds layer\(s\) \['fc'\] that are not in layers"):
        fusion_import(path, {"conv": layers["conv"]}, params)
    with pytest.raises(ValueError, match=r"layer 'fc': params have no entry for it"):
        fusion_import(path, layers, {"conv": params["conv"]})


def test_import_params_shape_must_match_layers(exported):
    layers, path, params = exported
    wrong = {"conv": params["conv"], "fc": fj.FusionParams(np.ones((5, 3), np.float32))}
    with pytest.raises(ValueError, match=r"layer 'fc': params hold original weights of shape"):
        fusion_import(path, layers, wrong)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("oops", r"line 8 \(layer 'fc'\), position 4: 'oops' is not a number"),
        ("nan", r"line 8 \(layer 'fc'\), position 4: conductance 'nan' is not a finite"),
        ("-0.1", r"line 8 \(layer 'fc'\), position 4: conductance '-0.1' is not a finite"),
    ],
)
def test_import_bad_values(exported, value, message):
    layers, path, params = exported
    line = chip_file.read_chip_file(path).layers["fc"].ravel().tolist()
    items = [repr(v) for v in line]
    items[3] = value
    _edit(path, 7, ",".join(items))
    with pytest.raises(ValueError, match=message):
        fusion_import(path, layers, params)


def test_import_wrong_number_of_values(exported):
    layers, path, params = exported
    values = chip_file.read_chip_file(path).layers["fc"].ravel().tolist()
    _edit(path, 7, ",".join(map(repr, values + [1.0])))
    with pytest.raises(ValueError, match=r"line 8 \(layer 'fc'\) has 16 values, expected 15"):
        fusion_import(path, layers, params)


def test_import_missing_file(tmp_path):
    layers = small_layers()
    _, params = fusion_export(layers, tmp_path / "m.csv")
    with pytest.raises(FileNotFoundError):
        fusion_import(tmp_path / "absent.csv", layers, params)
