"""The Fusion chip CSV file: exact bytes, round trips, atomic writes, validation."""

import dataclasses
import os
import re

import numpy as np
import pytest

import fusion_jax as fj
from fusion_jax import chip_file
from fusion_jax.chip_file import ChipFile, check_header, read_chip_file, write_chip_file

TARGET = fj.datasets.lenet5_path("target_g40.csv")
PROGRAMMED = fj.datasets.lenet5_path("programmed.csv")


def small_chip(**kwargs):
    rng = np.random.default_rng(0)
    layers = {
        "a": (rng.random((3, 4)) * 40).astype(np.float32),
        "b": (rng.random((2, 5)) * 40).astype(np.float32),
    }
    return ChipFile.from_layers(layers, **kwargs)


def test_reference_file_line_endings():
    """What the writer must reproduce: header lines 1-5 end in LF, the rest in CRLF."""
    raw = TARGET.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b""
    assert [line.endswith(b"\r") for line in lines[:-1]] == [False] * 5 + [True] * 5


def test_rewriting_the_reference_file_is_byte_identical(tmp_path):
    chip = read_chip_file(TARGET)
    out = tmp_path / "copy.csv"
    write_chip_file(out, chip)
    assert out.read_bytes() == TARGET.read_bytes()


def test_reads_lf_and_crlf_files_alike(tmp_path):
    raw = TARGET.read_bytes()
    lf = tmp_path / "lf.csv"
    lf.write_bytes(raw.replace(b"\r\n", b"\n"))
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    a, b, c = read_chip_file(TARGET), read_chip_file(lf), read_chip_file(crlf)
    for other in (b, c):
        assert other.names == a.names and other.ids == a.ids and other.widths == a.widths
        for name in a.names:
            np.testing.assert_array_equal(other.layers[name], a.layers[name])


def test_programmed_file_header():
    f = read_chip_file(PROGRAMMED)
    assert f.ids == (1, 4, 9, 11)
    assert f.classes == ("AnalogConv2dMapped",) * 2 + ("AnalogLinearMapped",) * 2
    assert f.counts == (400, 12800, 65536, 1280)
    assert f.heights == (16, 32, 128, 10) and f.widths == (25, 400, 512, 128)
    assert all(np.isfinite(v).all() and (v >= 0).all() for v in f.layers.values())


def test_round_trip_keeps_float32_values_exactly(tmp_path):
    chip = small_chip(ids=[3, 7], classes=["AnalogConv2dMapped", "AnalogLinearMapped"])
    path = tmp_path / "m.csv"
    write_chip_file(path, chip)
    back = read_chip_file(path)
    for field in ("ids", "classes", "counts", "heights", "widths", "names"):
        assert getattr(back, field) == getattr(chip, field)
    for name in chip.names:
        np.testing.assert_array_equal(back.layers[name].astype(np.float32), chip.layers[name])


def test_defaults_and_mapping_arguments():
    chip = small_chip()
    assert chip.ids == (1, 2) and chip.classes == (chip_file.DEFAULT_CLASS,) * 2
    chip = small_chip(ids={"b": 5, "a": 9}, classes={"a": "X", "b": "Y"})
    assert chip.ids == (9, 5) and chip.classes == ("X", "Y")


def test_integer_conductances_are_written_as_floats(tmp_path):
    chip = ChipFile.from_layers({"a": np.array([[40, 0]])})
    write_chip_file(tmp_path / "i.csv", chip)
    assert (tmp_path / "i.csv").read_bytes().endswith(b"a\r\n40.0,0.0\r\n")


# --- atomic writes ----------------------------------------------------------------------------


def _failing_formatter(monkeypatch, fail_on_call):
    real = chip_file._format_values
    calls = []

    def formatter(values):
        calls.append(1)
        if len(calls) == fail_on_call:
            raise RuntimeError("disk on fire")
        return real(values)

    monkeypatch.setattr(chip_file, "_format_values", formatter)
    return calls


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    calls = _failing_formatter(monkeypatch, fail_on_call=2)  # after the header and line 7
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_chip_file(tmp_path / "m.csv", small_chip())
    assert len(calls) == 2
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.csv"
    path.write_bytes(b"previous content")
    _failing_formatter(monkeypatch, fail_on_call=2)
    with pytest.raises(RuntimeError):
        write_chip_file(path, small_chip())
    assert os.listdir(tmp_path) == ["m.csv"]
    assert path.read_bytes() == b"previous content"


def test_failed_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(chip_file.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename refused"):
        write_chip_file(tmp_path / "m.csv", small_chip())
    assert os.listdir(tmp_path) == []


def test_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("old")
    write_chip_file(path, small_chip())
    assert read_chip_file(path).names == ("a", "b")
    assert os.listdir(tmp_path) == ["m.csv"]


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_chip_file(tmp_path / "nope" / "m.csv", small_chip())
    assert os.listdir(tmp_path) == []


# --- validation on write ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "what"),
    [("a,b", "comma"), ("a\nb", "line feed"), ("a\rb", "carriage return"), ('a"b', "quote")],
)
def test_bad_layer_names(name, what):
    with pytest.raises(ValueError, match=f"layer {re.escape(repr(name))}.*contains a {what}"):
        ChipFile.from_layers({name: np.ones((1, 1))})


def test_empty_and_non_string_names(tmp_path):
    # aihwkit names a single-layer model "" and writes it quoted; a class may not be empty.
    chip = ChipFile.from_layers({"": np.ones((1, 1))})
    write_chip_file(tmp_path / "m.csv", chip)
    assert (tmp_path / "m.csv").read_bytes().split(b"\n")[5] == b'""\r'
    assert read_chip_file(tmp_path / "m.csv").names == ("",)
    with pytest.raises(ValueError, match="layer 'a': the class is empty"):
        ChipFile.from_layers({"a": np.ones((1, 1))}, classes=[""])
    with pytest.raises(TypeError, match="layer name must be a string"):
        ChipFile.from_layers({3: np.ones((1, 1))})


def test_bad_classes():
    with pytest.raises(ValueError, match="layer 'b': the class 'Lin,ear' contains a comma"):
        small_chip(classes=["Conv", "Lin,ear"])
    with pytest.raises(ValueError, match="classes has 1 entries but there are 2 layers"):
        small_chip(classes=["Conv"])
    with pytest.raises(TypeError, match="classes must be a sequence"):
        small_chip(classes="AnalogLinearMapped")


def test_bad_ids():
    with pytest.raises(ValueError, match="ids has 3 entries but there are 2 layers"):
        small_chip(ids=[1, 2, 3])
    with pytest.raises(ValueError, match=r"ids must be distinct.*repeated: \[4\]"):
        small_chip(ids=[4, 4])
    with pytest.raises(TypeError, match="layer 'b': id 2.5 is not an integer"):
        small_chip(ids=[1, 2.5])
    with pytest.raises(ValueError, match=r"missing \['b'\], unknown \['c'\]"):
        small_chip(ids={"a": 1, "c": 2})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.5])
def test_bad_conductance_values(bad):
    g = np.ones((2, 3))
    g[1, 2] = bad
    with pytest.raises(ValueError, match=r"layer 'x'.*row 1, column 2 \(position 6"):
        ChipFile.from_layers({"x": g})


def test_bad_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"layer 'x'.*2-D.*shape \(4,\)"):
        ChipFile.from_layers({"x": np.ones(4)})
    with pytest.raises(ValueError, match=r"layer 'x'.*shape \(0, 3\)"):
        ChipFile.from_layers({"x": np.ones((0, 3))})
    with pytest.raises(TypeError, match="layer 'x': conductances must be real numbers"):
        ChipFile.from_layers({"x": np.ones((2, 2), complex)})
    with pytest.raises(ValueError, match="at least one layer"):
        ChipFile.from_layers({})


def test_device_limit():
    assert chip_file.CHIP_DEVICES == 512 * 2048 == 1_048_576
    check_header({"a": (1024, 1024)})  # exactly full: allowed
    message = r"need 1,048,577 devices.*chip has 1,048,576 \(512 x 2048\)"
    with pytest.raises(ValueError, match=message):
        check_header({"a": (1024, 1024), "b": (1, 1)})


def test_inconsistent_chip_file_is_refused(tmp_path):
    chip = small_chip()
    bad = dataclasses.replace(chip, heights=(3, 3))
    with pytest.raises(ValueError, match=r"chip.heights \(3, 3\) disagrees.*\(3, 2\)"):
        write_chip_file(tmp_path / "m.csv", bad)
    assert os.listdir(tmp_path) == []


# --- validation on read -----------------------------------------------------------------------


def _rewrite(tmp_path, edit):
    text = TARGET.read_text(encoding="utf-8").replace("\r\n", "\n")
    lines = text.split("\n")
    edit(lines)
    path = tmp_path / "edited.csv"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _set_value(line_index, position, value):
    def edit(lines):
        items = lines[line_index].split(",")
        items[position - 1] = value
        lines[line_index] = ",".join(items)

    return edit


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "line 8 \\(layer '3'\\), position 5: 'abc' is not a number"),
        ("nan", "line 8 \\(layer '3'\\), position 5: conductance 'nan' is not a finite"),
        ("-1.5", "line 8 \\(layer '3'\\), position 5: conductance '-1.5' is not a finite"),
    ],
)
def test_read_bad_value(tmp_path, value, message):
    path = _rewrite(tmp_path, _set_value(7, 5, value))
    with pytest.raises(ValueError, match=message):
        read_chip_file(path)


def test_read_wrong_number_of_values(tmp_path):
    def drop_one(lines):
        lines[6] = lines[6].rsplit(",", 1)[0]

    with pytest.raises(ValueError, match=r"line 7 \(layer '0'\) has 399 values, expected 400"):
        read_chip_file(_rewrite(tmp_path, drop_one))


def test_read_malformed_headers(tmp_path):
    def short_ids(lines):
        lines[0] = "1,4,9"

    with pytest.raises(ValueError, match=r"line 1 \(ids\) has 3 entries but line 6 names 4"):
        read_chip_file(_rewrite(tmp_path, short_ids))
    with pytest.raises(ValueError, match=r"line 4 \(heights\), position 2: 'x'"):
        read_chip_file(_rewrite(tmp_path, _set_value(3, 2, "x")))
    with pytest.raises(ValueError, match=r"line 6 \(names\) repeats a layer name"):
        read_chip_file(_rewrite(tmp_path, _set_value(5, 2, "0")))

    def truncate(lines):
        del lines[4:]

    with pytest.raises(ValueError, match="needs 6 header lines, found 4"):
        read_chip_file(_rewrite(tmp_path, truncate))

    def drop_layer_line(lines):
        del lines[9]

    with pytest.raises(ValueError, match="expected 4 data lines.*found 3"):
        read_chip_file(_rewrite(tmp_path, drop_layer_line))
