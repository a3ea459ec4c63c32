"""Tests of the ``fusion-jax`` command (fusion_jax/cli.py) and the sweep plot (plotting.py)."""

import contextlib
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusion_jax as fj
from fusion_jax import chip_file
from fusion_jax.cli import main, parse_time
from fusion_jax.plotting import plot_sweep

DATA = Path(fj.datasets.lenet5_path("weights.npz")).parent
WEIGHTS = DATA / "weights.npz"
TARGET = DATA / "target_g40.csv"
PROGRAMMED = DATA / "programmed.csv"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv):
    """``main(argv)`` in-process: (exit status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def script():
    """The installed ``fusion-jax`` script (``python -m fusion_jax`` if it is not installed)."""
    path = Path(sys.executable).with_name("fusion-jax")
    return [str(path)] if path.exists() else [sys.executable, "-m", "fusion_jax"]


def assert_one_line_error(status, err):
    assert status != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fusion-jax"), err
    assert "error:" in lines[0]


# --- sweep ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """One small sweep run in-process: 1 epoch, 2 g_max values, 2 seeds, 1 time.

    The MLP, seeds and grid size of the example of
    fj.training.hardware_aware_experiment: the run compiles their programs once.
    """
    out = tmp_path_factory.mktemp("sweep") / "results"
    argv = [
        "sweep",
        "--epochs",
        "1",
        "--hidden",
        "16",
        "--g-max-range",
        "10",
        "40",
        "2",
        "--seeds",
        "2",
        "--times",
        "1h",
        "--out",
        str(out),
        "--no-progress",
    ]
    # capsys is function-scoped: capture by hand for a module-scoped fixture.
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return status, stdout.getvalue(), stderr.getvalue(), out


def test_sweep_writes_csv_json_png_and_table(tiny_sweep):
    status, out, err, folder = tiny_sweep
    assert status == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [
        "sweep.csv",
        "sweep.json",
        "sweep.png",
        "table.txt",
    ]
    # The CSV: one row per model x g_max x seed x time.
    with open(folder / "sweep.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2 * 1
    assert {r["label"] for r in rows} == {"digital", "hardware-aware"}
    assert {float(r["g_max"]) for r in rows} == {10.0, 40.0}
    assert {int(r["seed"]) for r in rows} == {0, 1}
    assert {float(r["t_inference"]) for r in rows} == {3600.0}
    acc = np.array([float(r["accuracy"]) for r in rows])
    assert np.all((acc >= 0) & (acc <= 1))
    assert np.all(np.isfinite([float(r["loss"]) for r in rows]))
    # The JSON holds the same per-point accuracies, and the settings.
    payload = json.loads((folder / "sweep.json").read_text())
    assert [r["label"] for r in payload["results"]] == ["digital", "hardware-aware"]
    json_acc = [row["accuracy"] for r in payload["results"] for row in r["rows"]]
    np.testing.assert_allclose(json_acc, acc)
    assert payload["settings"]["epochs"] == 1 and payload["settings"]["noise"] == "chip"
    assert (folder / "sweep.png").read_bytes()[:8] == PNG_SIGNATURE
    # The printed tables: both models, the two g_max lines, the output folder named.
    assert "digital: accuracy (%)" in out and "hardware-aware: accuracy (%)" in out
    assert out.count("     10.00 ") == 2 and out.count("     40.00 ") == 2
    assert str(folder) in out
    assert (folder / "table.txt").read_text() in out
    assert "gain: mean +- s.e.m. of paired differences" in out  # the paired comparison


def test_sweep_is_the_digits_experiment(tiny_sweep):
    """The command runs fj.training.hardware_aware_experiment, not a copy of it."""
    from fusion_jax.training import hardware_aware_experiment

    payload = json.loads((tiny_sweep[3] / "sweep.json").read_text())
    experiment = hardware_aware_experiment(
        "mlp",
        seeds=[0, 1],
        g_max=[10.0, 40.0],
        t_inference=[3600.0],
        epochs=1,
        model_kwargs={"hidden": (16,)},
    )
    for r, expected in zip(payload["results"], (experiment.digital, experiment.aware), strict=True):
        got = np.array([row["accuracy"] for row in r["rows"]]).reshape(expected.accuracy.shape)
        np.testing.assert_allclose(got, expected.accuracy)


def test_sweep_error_leaves_no_output_folder(capsys, tmp_path):
    out = tmp_path / "never"
    status, _, err = run(capsys, "sweep", "--batch-size", "100000", "--out", out, "--no-progress")
    assert_one_line_error(status, err)
    assert "--batch-size" in err
    assert not out.exists()


def test_sweep_refuses_a_file_as_output_folder(capsys, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("keep me")
    status, _, err = run(capsys, "sweep", "--out", not_a_folder)
    assert_one_line_error(status, err)
    assert not_a_folder.read_text() == "keep me"


# --- export / import -----------------------------------------------------------------------


def test_export_reproduces_the_reference_file(capsys, tmp_path):
    out = tmp_path / "out.csv"
    status, stdout, err = run(capsys, "export", WEIGHTS, out)
    assert status == 0, err
    assert out.read_bytes() == TARGET.read_bytes()
    assert "80016" in stdout


def test_export_plain_npz_and_g_max(capsys, tmp_path):
    rng = np.random.default_rng(0)
    layers = {"fc1": rng.normal(size=(4, 6)), "fc2": rng.normal(size=(3, 4))}
    np.savez(tmp_path / "w.npz", **layers)
    status, _, err = run(capsys, "export", tmp_path / "w.npz", tmp_path / "w.csv", "--g-max", "25")
    assert status == 0, err
    chip = chip_file.read_chip_file(tmp_path / "w.csv")
    assert chip.names == ("fc1", "fc2") and chip.ids == (1, 2)
    for name, w in layers.items():
        # Each row scaled so that its largest |w| sits at g_max.
        expected = 25.0 * np.abs(w) / np.abs(w).max(axis=1, keepdims=True)
        np.testing.assert_allclose(chip.layers[name], expected, rtol=1e-6)


def test_import_of_the_chip_readback(capsys, tmp_path):
    out = tmp_path / "imported.npz"
    status, stdout, err = run(capsys, "import", PROGRAMMED, WEIGHTS, out)
    assert status == 0, err
    with np.load(WEIGHTS) as original, np.load(out) as imported:
        assert list(imported["layer_names"]) == list(original["layer_names"])
        np.testing.assert_array_equal(imported["layer_ids"], original["layer_ids"])
        for name in original["layer_names"]:
            w, w_hat = original[f"layer_{name}"], imported[f"layer_{name}"]
            assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
            assert np.all(np.isfinite(w_hat))
            # A noisy copy of the weights, not something else.
            assert np.corrcoef(w.ravel(), w_hat.ravel())[0, 1] > 0.9
            assert not np.allclose(w, w_hat)
    for name in ("0", "3", "8", "10", "all"):
        assert any(line.split()[:1] == [name] for line in stdout.splitlines()), stdout


def test_export_then_import_round_trip_and_strict_mode(capsys, tmp_path):
    w = np.array([[0.5, -1.0, 0.25], [0.3, 0.3, 0.3]], np.float32)  # row 1 is constant
    np.savez(tmp_path / "w.npz", fc=w)
    assert run(capsys, "export", tmp_path / "w.npz", tmp_path / "w.csv")[0] == 0
    status, _, err = run(
        capsys, "import", tmp_path / "w.csv", tmp_path / "w.npz", tmp_path / "back.npz"
    )
    assert status == 0, err
    with np.load(tmp_path / "back.npz") as back:
        assert list(back) == ["fc"]
        np.testing.assert_allclose(back["fc"], w, rtol=1e-5)
    status, _, err = run(
        capsys,
        "import",
        tmp_path / "w.csv",
        tmp_path / "w.npz",
        tmp_path / "strict.npz",
        "--strict-aihwkit",
    )
    assert status == 0, err
    with np.load(tmp_path / "strict.npz") as strict:
        np.testing.assert_allclose(strict["fc"][0], w[0], rtol=1e-5)
        np.testing.assert_array_equal(strict["fc"][1], 0.0)  # the reference zeroes it


# --- calibrate -----------------------------------------------------------------------------


def test_calibrate_prints_the_model_and_its_validation_table(capsys, tmp_path):
    status, out, err = run(
        capsys,
        "calibrate",
        TARGET,
        PROGRAMMED,
        "--table-bins",
        "4",
        "--json",
        tmp_path / "model.json",
    )
    assert status == 0, err
    for field in ("log_median_coefs", "log_spread_coefs", "shift", "stuck_probability"):
        assert field in out
    payload = json.loads((tmp_path / "model.json").read_text())
    rows = payload["validation"]
    assert len(rows) == 4
    assert sum(r["count"] for r in rows) == payload["devices"] == 80016
    # The printed table has one line per bin, below its header.
    header = next(i for i, line in enumerate(out.splitlines()) if line.startswith("target uS"))
    assert len(out.splitlines()[header + 1 :]) >= 4
    # The fitted parameters rebuild a model that reproduces the read-back's mean gain.
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in payload["parameters"].items()}
    model = fj.noise.FusionChipNoise(**params)
    data = fj.datasets.lenet5_readback()
    top = data.flat_targets() > 30
    assert (
        abs(
            float(np.mean(model.latent_mean(data.flat_targets()[top])))
            / float(np.mean(data.flat_programmed()[top]))
            - 1
        )
        < 0.05
    )


# --- help and errors -----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["sweep"], ["export"], ["import"], ["calibrate"]])
def test_help_exits_zero(capsys, argv):
    status, out, _ = run(capsys, *argv, "--help")
    assert status == 0
    assert out.startswith("usage: fusion-jax")


def test_script_export_and_errors_in_a_subprocess(tmp_path):
    out = tmp_path / "out.csv"
    done = subprocess.run(
        [*script(), "export", str(WEIGHTS), str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == TARGET.read_bytes()

    # python -m fusion_jax runs the same command.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusion_jax",
            "import",
            str(PROGRAMMED),
            str(tmp_path / "missing.npz"),
            str(tmp_path / "x.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(done.returncode, done.stderr)
    assert "missing.npz" in done.stderr
    assert not (tmp_path / "x.npz").exists()


@pytest.fixture
def bad_files(tmp_path):
    np.savez(tmp_path / "cube.npz", fc=np.ones(4))  # 1-D: not a layer ([out, in, *window] is)
    np.savez(tmp_path / "other.npz", a=np.ones((2, 3)))
    (tmp_path / "text.npz").write_text("not an archive")
    (tmp_path / "broken.csv").write_text("1\nAnalogLinearMapped\n2\n1\n2\nfc\n1.0,x\n")
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "status", "needle"),
    [
        (["export", "{d}/nope.npz", "{d}/o.csv"], 1, "nope.npz"),
        (["export", "{d}/cube.npz", "{d}/o.csv"], 1, "'fc'"),
        (["export", "{d}/text.npz", "{d}/o.csv"], 1, "text.npz"),
        (["export", "{w}", "{d}/o.csv", "--g-max", "50"], 2, "g_max"),
        (["export", "{w}", "{d}/no/such/folder/o.csv"], 1, "does not exist"),
        (["import", "{p}", "{d}/other.npz", "{d}/o.npz"], 1, "layer"),
        (["import", "{d}/broken.csv", "{w}", "{d}/o.npz"], 1, "broken.csv"),
        (["calibrate", "{d}/broken.csv", "{p}"], 1, "broken.csv"),
        (["calibrate", "{t}", "{d}/o.csv"], 1, "o.csv"),
        (["sweep", "--noise", "loud"], 2, "--noise"),
        (["sweep", "--g-max", "5"], 2, "g_max"),
        (["sweep", "--g-max-range", "40", "10", "3"], 2, "--g-max-range"),
        (["sweep", "--times", "1 fortnight"], 2, "fortnight"),
        (["sweep", "--seeds", "0"], 2, "--seeds"),
        (["frobnicate"], 2, "frobnicate"),
    ],
)
def test_errors_are_one_line_and_leave_no_file(capsys, bad_files, argv, status, needle):
    fill = {"d": bad_files, "w": WEIGHTS, "p": PROGRAMMED, "t": TARGET}
    argv = [a.format(**fill) for a in argv]
    before = sorted(p.name for p in bad_files.iterdir())
    got, _, err = run(capsys, *argv)
    assert got == status
    assert_one_line_error(got, err)
    assert needle in err
    assert sorted(p.name for p in bad_files.iterdir()) == before  # nothing written


@pytest.mark.parametrize("field", ["layer_ids", "layer_classes"])
def test_import_against_mismatched_metadata(capsys, tmp_path, field):
    """A read-back whose header ids or classes disagree with the weights' metadata is refused."""
    with np.load(WEIGHTS) as z:
        arrays = dict(z)
    arrays[field] = arrays[field][::-1]  # ids and classes both differ between layers
    np.savez(tmp_path / "w.npz", **arrays)
    status, _, err = run(capsys, "import", PROGRAMMED, tmp_path / "w.npz", tmp_path / "o.npz")
    assert_one_line_error(status, err)
    assert ("has id " if field == "layer_ids" else "has class ") in err
    assert not (tmp_path / "o.npz").exists()


# --- parse_time and plot_sweep -------------------------------------------------------------


def test_parse_time():
    assert parse_time("1s") == 1.0
    assert parse_time("30min") == 1800.0
    assert parse_time("2.5h") == 9000.0
    assert parse_time("1d") == 86400.0
    assert parse_time("1e3") == 1000.0
    assert parse_time("0") == 0.0
    for bad in ("", "h", "1 week", "-1s", "nan", "1e999"):
        with pytest.raises(ValueError):
            parse_time(bad)


def _result(label, shift=0.0):
    acc = np.random.default_rng(0).uniform(0.8, 0.9, (3, 2, 2)) + shift
    return fj.SweepResult(
        np.array([10.0, 25.0, 40.0]), np.arange(2), np.array([1.0, 3600.0]), acc, 1 - acc, label
    )


def test_plot_sweep_overlays_results_on_one_axes(tmp_path):
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    figure = plot_sweep([_result("aware", 0.05), _result("digital")], ax=ax)
    assert figure is ax.figure
    styles = [line.get_linestyle() for line in ax.get_lines()]
    assert styles == ["-", "-", "--", "--"]  # one style per result, one line per time
    means = ax.get_lines()[0].get_ydata()
    np.testing.assert_allclose(means, 100 * _result("aware", 0.05).accuracy[:, :, 0].mean(1))


def test_plot_sweep_rejects_bad_input(tmp_path):
    from matplotlib.figure import Figure

    with pytest.raises(ValueError):
        plot_sweep([])
    with pytest.raises(TypeError):
        plot_sweep([object()])
    with pytest.raises(ValueError):
        plot_sweep([_result("a"), _result("b")], ax=[Figure().add_subplot()])
    with pytest.raises(OSError):
        plot_sweep([_result("a")], tmp_path / "no" / "such" / "plot.png")
    assert list(tmp_path.iterdir()) == []


def test_plot_sweep_error_bars_stay_apart_and_clean_line_is_drawn():
    figure = plot_sweep([_result("digital"), _result("aware", 0.05)], clean=[0.95, 0.93])
    assert len(figure.legends) == 1  # one legend below both panels
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[:2] == ["t=1 s", "t=1 h"] and "before programming" in labels
    for ax, level in zip(figure.axes, (95.0, 93.0), strict=True):
        clean_lines = [line for line in ax.get_lines() if line.get_xdata()[0] == 0]
        assert [line.get_ydata()[0] for line in clean_lines] == [level]
        # one set of error bars per time, offset sideways: their x positions differ
        xs = [seg[0][0] for coll in ax.collections for seg in coll.get_segments()[:1]]
        assert len(xs) == 2 and xs[0] != xs[1]
    with pytest.raises(ValueError, match="clean"):
        plot_sweep([_result("a")], clean=[1.5])


def test_version_and_data_paths(capsys):
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.strip() == f"fusion-jax {fj.__version__}"
    status, out, _ = run(capsys, "data")
    assert status == 0 and Path(out.strip()) == DATA
    status, out, _ = run(capsys, "data", "programmed.csv")
    assert status == 0 and Path(out.strip()) == PROGRAMMED and PROGRAMMED.is_file()
    status, _, err = run(capsys, "data", "nope.csv")
    assert_one_line_error(status, err)
    assert "nope.csv" in err


def test_sweep_passes_the_tile_sizes_to_the_experiment(capsys, tmp_path, monkeypatch):
    import fusion_jax.training

    seen = {}

    class Stop(Exception):
        pass

    def experiment(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(fusion_jax.training, "hardware_aware_experiment", experiment)
    with pytest.raises(Stop):
        main(["sweep", "--max-input-size", "32", "--max-output-size", "0", "--out", str(tmp_path)])
    assert seen["max_input_size"] == 32 and seen["max_output_size"] == 0
    status, _, err = run(capsys, "sweep", "--max-input-size", "-1")
    assert status == 2 and "--max-input-size" in err
