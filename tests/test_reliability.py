"""Issue 11: no silent NaN, zero or wrap-around; every write all-or-nothing.

Each class of bad input gets a clear error naming what is wrong at every
entry point; numbers at the edges of the float range come back exact;
files are replaced all or nothing.
"""

import dataclasses
import functools
import os
import re
import stat
import subprocess
import sys
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st
from noise_doubles import OffsetNoise

import fusion_jax as fj
from fusion_jax import _atomic
from fusion_jax.chip_file import ChipFile, read_chip_file, write_chip_file
from fusion_jax.cli import _common as cli_common
from fusion_jax.evaluation import _check_before_grid, _check_grid
from fusion_jax.noise import FusionChipNoise, PCMLikeNoise, calibrate

KEY = jax.random.key(0)
W = jnp.array([[1.0, -2.0, 0.5], [0.25, 0.5, -0.125]])
KERNEL = W.T  # [in, out]
CHIP = FusionChipNoise.lenet5_readback()


# --- one settings check at every entry point ------------------------------------------------


def _apply_fn(p, x):
    return x @ p["kernel"]


def _entry_points():
    """name -> function(t_inference=, key=, noise=) calling one public entry point."""
    x, y = jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)
    return {
        "program": lambda **kw: fj.program(W, **kw),
        "program_kernel": lambda **kw: fj.program_kernel(KERNEL, **kw),
        "program_params": lambda **kw: fj.program_params({"kernel": KERNEL}, **kw),
        "FusionLinear": lambda key=KEY, **kw: fj.nnx.FusionLinear(
            3, 2, rngs=nnx.Rngs(params=0, noise=1), **kw
        ),
        "FusionDense": lambda key=KEY, **kw: fj.linen.FusionDense(2, **kw).init(
            {"params": key}, jnp.ones((1, 3)), deterministic=False
        ),
        "PCMLikeNoise.sample": lambda noise=None, **kw: PCMLikeNoise().sample(
            jnp.ones(3), g_max=40.0, **kw
        ),
        "FusionChipNoise.sample": lambda noise=None, **kw: CHIP.sample(
            jnp.ones(3), g_max=40.0, **kw
        ),
        "sweep": lambda key=KEY, t_inference=1.0, **kw: fj.sweep(
            _apply_fn,
            {"kernel": KERNEL},
            (x, y),
            g_max=[40.0],
            seeds=[0],
            t_inference=[t_inference],
            **kw,
        ),
    }


ENTRY = _entry_points()


@pytest.mark.parametrize("entry", sorted(ENTRY))
@pytest.mark.parametrize(
    ("t", "error", "message"),
    [
        (float("nan"), ValueError, r"t_inference must be a finite number of seconds >= 0, got nan"),
        (-1.0, ValueError, r"t_inference must be a finite number of seconds >= 0, got -1.0"),
        (float("inf"), ValueError, r"t_inference must be a finite number of seconds >= 0"),
        ("1", TypeError, r"t_inference must be a real number of seconds, got str '1'"),
    ],
)
def test_bad_t_inference_is_refused_at_every_entry_point(entry, t, error, message):
    with pytest.raises(error, match=message):
        ENTRY[entry](t_inference=t, key=KEY)


@pytest.mark.parametrize(
    "entry", ["program", "program_kernel", "program_params", "PCMLikeNoise.sample"]
)
@pytest.mark.parametrize("key", [0, np.int64(3), "seed"])
def test_a_key_that_is_no_prng_key_is_named(entry, key):
    with pytest.raises(TypeError, match=r"key must be a PRNG key such as jax.random.key\(0\)"):
        ENTRY[entry](key=key, t_inference=0.0)


def test_a_batch_of_keys_is_refused():
    with pytest.raises(ValueError, match="got a batch of keys of shape"):
        fj.program(W, jax.random.split(KEY, 2))


def test_a_legacy_raw_key_still_works():
    out = fj.program(W, jax.random.PRNGKey(0), noise=PCMLikeNoise())
    assert out.shape == W.shape and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize(
    "entry", ["program", "program_kernel", "program_params", "FusionLinear", "FusionDense", "sweep"]
)
@pytest.mark.parametrize("value", ["no", 1])
def test_a_switch_that_is_not_a_bool_is_named(entry, value):
    # A string such as "no" would count as True: strict_aihwkit would zero degenerate rows.
    with pytest.raises(TypeError, match=rf"^{entry}: strict_aihwkit must be True or False, got"):
        ENTRY[entry](key=KEY, strict_aihwkit=value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PCMLikeNoise(read_noise="yes"), "PCMLikeNoise: read_noise must be True or False"),
        (
            lambda: fj.nnx.FusionLinear(3, 2, deterministic="no", rngs=nnx.Rngs(0)),
            "FusionLinear: deterministic must be True, False or None, got 'no'",
        ),
        (
            lambda: nnx.view(fj.nnx.FusionLinear(3, 2, rngs=nnx.Rngs(0)), deterministic="no"),
            "FusionLinear: deterministic must be True or False, got 'no'",
        ),
        (
            lambda: fj.FusionConductanceConverter(strict_aihwkit="no"),
            "FusionConductanceConverter: strict_aihwkit",
        ),
        (lambda: fj.sweep(_apply_fn, {"kernel": KERNEL}, None, stacked=1), "sweep: stacked"),
    ],
)
def test_other_switches_that_are_not_bools_are_named(build, message):
    with pytest.raises(TypeError, match=message):
        build()


def test_a_view_checks_t_inference_and_program_names_empty_weights():
    layer = fj.nnx.FusionLinear(3, 2, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"^FusionLinear: t_inference must be a real number"):
        nnx.view(layer, t_inference="x")
    with pytest.raises(ValueError, match=r"^FusionLinear: t_inference must be a finite number"):
        nnx.view(layer, t_inference=-1.0)
    with pytest.raises(ValueError, match=r"^program: weights is empty \(shape \(0, 3\)\)"):
        fj.program(jnp.zeros((0, 3)), KEY)


@pytest.mark.parametrize(
    "entry", ["program", "program_kernel", "program_params", "FusionLinear", "FusionDense", "sweep"]
)
@pytest.mark.parametrize("cls", [PCMLikeNoise, FusionChipNoise])
def test_a_noise_class_instead_of_an_instance_is_named(entry, cls):
    with pytest.raises(TypeError, match=rf"got the class {cls.__name__} itself"):
        ENTRY[entry](noise=cls, key=KEY)


PCM_RULES = {
    "prog_noise_scale": ">= 0",
    "read_noise_scale": ">= 0",
    "drift_scale": ">= 0",
    "t0": "> 0",
    "t_read": "> 0",
    "c0": "finite",
    "c1": "finite",
    "c2": "finite",
}
CHIP_RULES = {
    "shift": "> 0",
    "stuck_probability": "in [0, 1]",
    "spread_scale": ">= 0",
    "t_calibration": ">= 0",
    "drift_scale": ">= 0",
    "read_noise_scale": ">= 0",
    "t0": "> 0",
    "t_read": "> 0",
    "g_ref": "> 0",
    "g_floor": "> 0",
}


def _violates(rule, value):
    if not np.isfinite(value):
        return True
    return {
        "finite": False,
        ">= 0": value < 0,
        "> 0": value <= 0,
        "in [0, 1]": not 0 <= value <= 1,
    }[rule]


@given(
    model=st.sampled_from(["pcm", "chip"]),
    data=st.data(),
    value=st.one_of(
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, 1.0, 1.5, -1e-9]),
        st.floats(-1e6, 1e6),
    ),
)
def test_noise_model_fields_are_checked_where_the_model_is_built(model, data, value):
    rules = PCM_RULES if model == "pcm" else CHIP_RULES
    name = data.draw(st.sampled_from(sorted(rules)))

    def build():
        if model == "pcm":
            return PCMLikeNoise(**{name: value})
        return FusionChipNoise.lenet5_readback(**{name: value})

    if _violates(rules[name], value):
        with pytest.raises(ValueError, match=rf"\.{name} must be finite"):
            build()
    else:
        assert getattr(build(), name) == value


@pytest.mark.parametrize("field", ["log_median_coefs", "log_spread_coefs"])
def test_nan_polynomial_coefficient_is_refused(field):
    bad = (float("nan"), 1.0, 0.0)
    with pytest.raises(ValueError, match=rf"FusionChipNoise.{field} must be finite"):
        FusionChipNoise.lenet5_readback(**{field: bad})
    with pytest.raises(ValueError, match="non-empty tuple"):
        FusionChipNoise.lenet5_readback(**{field: ()})


def test_text_field_is_refused():
    with pytest.raises(TypeError, match=r"PCMLikeNoise.c0 must be a number, got the text '1'"):
        PCMLikeNoise(c0="1")


def test_traced_and_batched_fields_still_work():
    # A batch of models (array fields) checks every value ...
    with pytest.raises(ValueError, match="stuck_probability"):
        FusionChipNoise.lenet5_readback(stuck_probability=jnp.array([0.1, 2.0]))
    # ... and vmapping over a field (traced inside) builds models from tracers.
    batch = FusionChipNoise.lenet5_readback(spread_scale=jnp.array([0.0, 1.0]))
    # An in_axes spec: a model whose fields are placeholders (None, 0).
    axes = dataclasses.replace(jax.tree.map(lambda _: None, CHIP), spread_scale=0)
    out = jax.jit(  # one program, not an eager compile per operation
        jax.vmap(
            lambda m: m.sample(jnp.full(8, 20.0), KEY, g_max=40.0, t_inference=3600.0),
            in_axes=(axes,),
        )
    )(batch)
    assert out.shape == (2, 8)
    assert float(np.std(out[0])) < float(np.std(out[1]))


# --- calibrate ------------------------------------------------------------------------------


def _calibration_pair(n=2000):
    t = np.linspace(0.0, 40.0, n)
    return t, 0.5 * t


def test_calibrate_max_iter_zero_is_a_clear_error():
    t, p = _calibration_pair()
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1, got 0"):
        calibrate(t, p, n_fit_bins=8, max_iter=0)


@given(
    positions=st.lists(st.integers(0, 1999), min_size=1, max_size=12, unique=True),
    value=st.floats(40.001, 1e6),
)
def test_calibrate_refuses_targets_above_g_max_naming_count_and_positions(positions, value):
    t, p = _calibration_pair()
    t[positions] = value
    first = sorted(positions)[:8]
    shown = ", ".join(str(i) for i in first)
    with pytest.raises(ValueError, match=rf"{len(positions)} of 2000 exceed it") as err:
        calibrate(t, p, n_fit_bins=8)
    assert f"positions [{shown}" in str(err.value)


def test_calibrate_names_2d_positions_and_honours_g_max():
    t = np.linspace(0.0, 25.0, 2000).reshape(40, 50)
    t[3, 7] = 30.0  # fine at g_max 40, not at 25
    with pytest.raises(ValueError, match=r"g_max = 25\] uS.*at positions \[\(3, 7\)\]"):
        calibrate(t, 0.5 * t, n_fit_bins=8, g_max=25.0)


# --- sweep seeds ----------------------------------------------------------------------------


@pytest.mark.parametrize("seeds", [[2**32], [1, 2**40], [-1], 2**32 + 1])
def test_sweep_refuses_seeds_that_would_wrap_around(seeds):
    with pytest.raises(ValueError, match="seeds must"):
        _check_grid([40.0], seeds, [1.0])


@pytest.mark.parametrize("seeds", [KEY, jax.random.split(KEY, 3)])
def test_keys_given_as_seeds_are_named(seeds):
    from fusion_jax.training import hardware_aware_experiment

    message = r"seeds must be integer seeds .* got a PRNG key array of shape"
    with pytest.raises(TypeError, match=message):
        _check_grid([40.0], seeds, [1.0])
    with pytest.raises(TypeError, match=message):
        hardware_aware_experiment(seeds=seeds)


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ((0.5, 1.5), "seeds must be a 1-D sequence of integers"),  # int() made them 0 and 1
        (3, "seeds must be a sequence of seeds, got 3; for seeds 0 to n - 1 pass range"),
        (jnp.array(3), "seeds must be a sequence of seeds, got Array(3"),
    ],
)
def test_experiments_refuse_seeds_they_would_change(seeds, message):
    from fusion_jax.training import hardware_aware_experiment
    from fusion_jax.transformer import programmed_accuracy, transformer_experiment

    calls = [
        lambda: hardware_aware_experiment(seeds=seeds),
        lambda: transformer_experiment(seeds=seeds),
        lambda: programmed_accuracy([], np.zeros((1, 2)), np.zeros(1, np.int32), seeds),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


@pytest.mark.parametrize("seed", [1.7, KEY, True, "0", np.float32(2.0)])
def test_a_single_seed_must_be_an_integer(seed):
    # int() would have truncated 1.7 to 1, and failed on a key with Python's own message.
    from fusion_jax.digits import load_digits_split
    from fusion_jax.training import train
    from fusion_jax.transformer import histogram_task

    calls = {
        "train": lambda: train(None, None, None, seed=seed),
        "histogram_task": lambda: histogram_task(seed=seed),
        "load_digits_split": lambda: load_digits_split(seed=seed),
    }
    for where, call in calls.items():
        with pytest.raises(TypeError, match=rf"^{where}: seed must be an integer"):
            call()
    for seed in (-1, 2**32, 2**64):  # integers out of range, however large
        with pytest.raises(ValueError, match=rf"^train: seed must lie in .*, got {seed}\.$"):
            train(None, None, None, seed=seed)


def test_training_refuses_bad_data_labels_and_parameters_before_compiling():
    """Inside the compiled epoch a NaN would surface only as 'training diverged ... lower the
    learning rate': the data, the labels and the parameters are checked first, named."""
    from compile_count import counting_compiles

    from fusion_jax.training import train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = rng.integers(0, 2, 8).astype(np.int32)
    model = fj.nnx.FusionLinear(3, 2, noise=None, rngs=nnx.Rngs(0))  # 2 classes
    bad_x = x.copy()
    bad_x[5, 1] = np.nan
    bad_y = y.copy()
    bad_y[3] = 2
    cases = [
        (
            (bad_x, y),
            r"^train: training data 'x' contains 1 NaN or Inf value \(the first at "
            r"index \(5, 1\); shape \(8, 3\)\)",
        ),
        ((x, bad_y), r"^train: y must be class indices in \[0, 2\) .* the first, 2, at example 3"),
        ((x, y.astype(np.float32)), r"^train: y must be integer class labels for the default"),
    ]
    with counting_compiles() as compiles:
        for (xi, yi), message in cases:
            with pytest.raises(ValueError, match=message):
                train(model, xi, yi, epochs=1, batch_size=4)
        kernel = np.array(model.kernel[...])
        kernel[1, 1] = np.inf
        model.kernel.set_value(jax.device_put(kernel))  # no compile, unlike [...] =
        with pytest.raises(
            ValueError,
            match=r"^train: parameter 'kernel' contains 1 NaN or Inf "
            r"value \(the first at index \(1, 1\)",
        ):
            train(model, x, y, epochs=1, batch_size=4)
        assert compiles() == 0


def test_seed_sequences_of_any_iterable_are_read_as_given():
    from fusion_jax._validation import seed_list

    assert seed_list((s for s in (4, 1)), "f") == [4, 1]  # a generator, read once
    assert seed_list(range(3), "f") == seed_list(np.arange(3), "f") == [0, 1, 2]
    assert seed_list(jnp.array([7, 2]), "f") == [7, 2]


@pytest.mark.parametrize(
    "layer",
    [
        lambda rngs: fj.nnx.FusionLinear(3, 2, rngs=rngs),
        lambda rngs: fj.nnx.FusionConv(3, 2, (3, 3), rngs=rngs),
        lambda rngs: fj.nnx.FusionConvTranspose(3, 2, (3, 3), rngs=rngs),
        lambda rngs: fj.nnx.FusionLinearGeneral(3, 2, rngs=rngs),
        lambda rngs: fj.nnx.FusionEinsum("ab,bc->ac", (3, 2), rngs=rngs),
    ],
)
@pytest.mark.parametrize(
    ("rngs", "shown"),
    [(0, "int 0"), (np.int64(0), "int64 0"), (KEY, "PRNGKeyArray"), (None, "NoneType")],
)
def test_constructor_rngs_that_are_no_nnx_rngs_are_named(layer, rngs, shown):
    # Flax's own layers fail with "'int' object has no attribute 'params'".
    with pytest.raises(TypeError, match=r"^Fusion\w+: rngs must be an nnx.Rngs") as err:
        layer(rngs)
    assert str(err.value).endswith(f"got {shown}.")


@pytest.mark.parametrize("cls", ["FusionConv", "FusionConvTranspose"])
def test_a_tile_smaller_than_a_conv_channel_is_refused_when_the_layer_is_built(cls):
    # Checked at the first call before; nnx.eval_shape: built without compiling.
    def build(size):
        layer = getattr(fj.nnx, cls)
        return nnx.eval_shape(lambda: layer(4, 8, (3, 3), max_input_size=size, rngs=nnx.Rngs(0)))

    message = rf"^{cls} \(kernel \(3, 3, 4, 8\)\): a group of 9 elements \(one conv input channel"
    with pytest.raises(ValueError, match=message):
        build(8)
    assert build(9).max_input_size == 9  # one channel per tile fits
    # fusionize knows the layer's path and names it.
    plain = getattr(nnx, cls.removeprefix("Fusion"))
    model = nnx.eval_shape(lambda: nnx.Sequential(plain(4, 8, (3, 3), rngs=nnx.Rngs(0))))
    with pytest.raises(ValueError, match=r"^fusionize: layer layers/0: " + message[1:]):
        fj.nnx.fusionize(model, max_input_size=8)


def test_a_converted_layer_without_a_noise_stream_says_where_to_pass_rngs():
    # fusionize's user built no Fusion layer: "pass rngs= to the constructor" alone left
    # them without an answer.
    model = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0)))
    x = jnp.ones((1, 3))
    with pytest.raises(ValueError, match=re.escape("fj.nnx.fusionize(model, rngs=nnx.Rngs(noise")):
        fj.nnx.fusionize(model)(x)
    assert fj.nnx.fusionize(model, rngs=nnx.Rngs(noise=0))(x).shape == (1, 2)  # the advice works


@pytest.mark.parametrize("seeds", [[2**32], [0, -3]])
def test_training_seeds_that_would_wrap_around_are_refused(seeds):
    from fusion_jax.training import hardware_aware_experiment

    with pytest.raises(ValueError, match=r"seeds must lie in \[0, 2\*\*32 - 1\]"):
        hardware_aware_experiment(seeds=seeds)


def test_sweep_keeps_the_largest_32_bit_seed():
    _, s, _ = _check_grid([40.0], np.array([0, 2**32 - 1], np.uint64), [1.0])
    assert s.tolist() == [0, 2**32 - 1]


# --- numbers at the edges -------------------------------------------------------------------

SHAPE = (4, 8)


@given(
    exponents=st.lists(st.integers(-60, 127), min_size=4, max_size=4),
    mantissas=st.lists(
        st.floats(-1.0, 1.0, width=32).filter(lambda v: v == 0 or abs(v) >= 2**-8),
        min_size=32,
        max_size=32,
    ),
    g_max=st.floats(10.0, 40.0),
)
def test_round_trip_is_exact_over_the_whole_float32_range(exponents, mantissas, g_max):
    m = np.array(mantissas, np.float32).reshape(SHAPE)
    m[:, 0] = np.where(np.arange(4) % 2, 1.0, -1.0)  # each row's max at full magnitude
    w = (m.astype(np.float64) * np.exp2(np.array(exponents, np.float64))[:, None]).astype(
        np.float32
    )
    w = np.where(np.isinf(w), np.sign(w) * np.finfo(np.float32).max, w).astype(np.float32)
    g, params = fj.convert_to_conductances(w, g_max=g_max)
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    # Each row's largest weight lands on g_max (rows below the reference's
    # floor of 1e-10 are scaled by g_max / 1e-10 instead).
    row_max = np.abs(w).max(axis=1).astype(np.float64)
    expected = g_max * row_max / np.maximum(row_max, 1e-10)
    np.testing.assert_allclose(g.max(axis=1), expected, rtol=1e-6)
    for out in (
        fj.convert_back_to_weights(g, params),
        fj.program(w, noise=None, g_max=g_max),
    ):
        out = np.asarray(out)
        assert np.all(np.isfinite(out))
        scale = np.abs(w).max(axis=1, keepdims=True).astype(np.float64)
        err = np.abs(out.astype(np.float64) - w) / scale
        assert err.max() < 1e-5, (err.max(), exponents)


def test_largest_rows_are_not_zeroed():
    big = np.float32(2.0**127 * 1.5)
    w = jnp.array([[big, 1.0, -big / 3], [2.0**126, -(2.0**125), 0.0]], jnp.float32)
    g, _ = fj.convert_to_conductances(w)
    np.testing.assert_allclose(np.asarray(g)[:, 0], [40.0, 40.0], rtol=1e-6)
    assert float(g[0, 1]) > 0  # 1 / 2**127 * 40: small but not flushed
    out = fj.program(w, noise=None)
    np.testing.assert_allclose(np.asarray(out), np.asarray(w), rtol=1e-6)


@given(
    rows=st.lists(st.floats(1e-3, 1e3), min_size=4, max_size=4),
    g_max=st.sampled_from([10.0, 25.0, 40.0]),
)
def test_ordinary_rows_scale_bit_for_bit_as_before(rows, g_max):
    # Rows away from the float range's ends take the plain float32 formula,
    # unchanged: g_max / m, or torch's reciprocal(m) * g_max (aihwkit's bytes).
    w = np.linspace(-1.0, 1.0, 32, dtype=np.float32).reshape(SHAPE) * np.float32(rows)[:, None]
    g, _ = fj.convert_to_conductances(w, g_max=g_max)
    m = np.abs(w).max(axis=1, keepdims=True)
    g32 = np.float32(g_max)
    candidates = [g32 / m, (np.float32(1.0) / m) * g32]
    matches = [
        np.array_equal(np.asarray(g), np.abs(np.clip(w * scale, -g32, g32))) for scale in candidates
    ]
    assert any(matches)


@given(
    targets=st.lists(st.floats(0.0, 40.0, width=16), min_size=16, max_size=16),
    model=st.sampled_from(["pcm", "chip"]),
    t=st.sampled_from([0.0, 3600.0, 3.15e7]),
)
def test_float16_conductances_do_not_overflow_in_the_noise_models(targets, model, t):
    noise = PCMLikeNoise() if model == "pcm" else CHIP
    g = jnp.array(targets, jnp.float16)
    out, ref = _sample_f16_and_f32(noise, g, jnp.float32(t))
    assert out.dtype == jnp.float16
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(out >= 0))
    # The same draw as float32 inputs, rounded to float16.
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref.astype(jnp.float16)))


@jax.jit
def _sample_f16_and_f32(noise, g16, t):
    """One compile per model type: the float16 sample and the float32 one of the same targets."""
    out = noise.sample(g16, KEY, g_max=40.0, t_inference=t)
    return out, noise.sample(g16.astype(jnp.float32), KEY, g_max=40.0, t_inference=t)


@pytest.mark.parametrize(
    ("value", "dtype", "message"),
    [
        (2**40, np.int64, r"1 int64 value out of range for int32"),
        (-(2**31) - 1, np.int64, r"out of range for int32"),
        (2**33, np.uint64, r"out of range for uint32"),
        (1e-300, np.float64, r"out of range for float32 \(nonzero magnitudes 1.175e-38"),
        (1e-40, np.float64, r"out of range for float32"),
        (1e300, np.float64, r"1 float64 value out of range for float32"),
    ],
)
@pytest.mark.parametrize("entry", ["convert", "program", "program_kernel", "noise", "slope"])
def test_x64_off_values_that_would_change_are_refused(value, dtype, message, entry):
    assert not jax.config.jax_enable_x64
    w = np.array([[1, 2, 3], [4, 5, 6]], dtype=dtype)
    w[1, 2] = value
    call = {
        "convert": lambda: fj.convert_to_conductances(w),
        "program": lambda: fj.program(w, noise=None),
        "program_kernel": lambda: fj.program_kernel(w, noise=None),
        "noise": lambda: PCMLikeNoise().sample(np.abs(w), KEY, g_max=40.0, t_inference=0.0),
        "slope": lambda: fj.regression_slope(w, w),
    }[entry]
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "NaN or Inf" not in str(err.value)
    assert "row 1, column 2" in str(err.value)


def test_x64_off_in_range_64_bit_values_are_accepted():
    w64 = np.array([[1.0, -2.0, 1e-30], [4.0, 0.0, 6.0]])
    g, _ = fj.convert_to_conductances(w64)
    g32, _ = fj.convert_to_conductances(w64.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(g), np.asarray(g32))
    gi, _ = fj.convert_to_conductances(np.array([[2**31 - 1, 1, 0], [1, 2, 3]], np.int64))
    assert float(gi[0, 0]) == 40.0


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.uint8, np.bool_])
def test_numpy_inputs_become_the_arrays_jnp_asarray_makes_without_a_compile(dtype):
    from compile_count import counting_compiles

    from fusion_jax._validation import to_jax

    # a shape no other test uses: the run shares compiled programs between tests
    value = (np.arange(-6, 15, dtype=np.float64).reshape(1, 3, 1, 7, 1) / 4).astype(dtype)
    with counting_compiles() as compiles:
        got = to_jax(value)
    assert compiles() == 0  # jnp.asarray compiles a copy for a new shape
    expected = jnp.asarray(value)
    assert got.dtype == expected.dtype and got.weak_type == expected.weak_type
    np.testing.assert_array_equal(got, expected)


def test_x64_on_1e300_round_trips(x64):
    w = np.array([[1e300, -2e299, 3.0], [1e-300, 5e-301, 0.0]])
    np.testing.assert_allclose(np.asarray(fj.program(w, noise=None)), w, rtol=1e-12)


# Row 1's largest magnitude, 1e-37, is a normal float32, but its slope back to weights
# (about 1e-37 / g_max) is not: XLA flushes it to 0, and the row came back as zeros.
TINY_ROW = np.array([[1.0, 2.0, 3.0], [1e-37, 5e-38, -3.3e-38]], np.float32)


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        ("convert", "weights: 1 row is too small to program (row [1], largest magnitude 1e-37"),
        ("program", "weights: 1 row is too small"),
        ("program_kernel", "kernel: 1 row is too small to program (row [1]"),
        ("program_params", "program_params: leaf 'dense/kernel': kernel: 1 row is too small"),
        ("layer", "FusionLinear (kernel (3, 2)): kernel: 1 row is too small"),
        ("sweep", "sweep: leaf 'dense/kernel': kernel: 1 row is too small to program (row [1]"),
    ],
)
def test_rows_too_small_to_program_are_refused_not_zeroed(entry, where):
    # One chip row per output at every entry point: row 1 is the kernel's output 1.
    kernel = TINY_ROW.T
    params = {"dense": {"kernel": kernel}}

    def layer():
        model = fj.nnx.FusionLinear(3, 2, noise=None, rngs=nnx.Rngs(0))
        model.kernel[...] = kernel
        return model(np.ones((1, 3), np.float32))

    call = {
        "convert": lambda: fj.convert_to_conductances(TINY_ROW),
        "program": lambda: fj.program(TINY_ROW, noise=None),
        "program_kernel": lambda: fj.program_kernel(kernel, noise=None),
        "program_params": lambda: fj.program_params(params, None, noise=None),
        "layer": layer,
        "sweep": lambda: fj.sweep(
            lambda p, x: x @ p["dense"]["kernel"],
            params,
            (np.ones((4, 3), np.float32), np.zeros(4, np.int32)),
            g_max=[40.0],
            seeds=[0],
            t_inference=[1.0],
        ),
    }[entry]
    with pytest.raises(ValueError, match=re.escape(where)) as err:
        call()
    assert "must be at least 3.009e-36 (256 times the smallest normal float32)" in str(err.value)


def test_sweep_checks_each_kernel_before_its_compiled_grid():
    """Inside the sweep's compiled grid a traced check cannot report: NaN weights would
    surface as a NaN loss, rows too small to program as zeros. Each kernel (of each
    parameter set, with ``stacked``) is checked before compiling, naming the leaf."""
    from compile_count import counting_compiles

    data = (np.ones((4, 3), np.float32), np.zeros(4, np.int32))
    grid = {"g_max": [40.0], "t_inference": [1.0]}
    nan_kernel = np.ones((3, 2), np.float32)
    nan_kernel[2, 1] = np.nan
    # One parameter set per seed: the second set's row 1 is too small; named with its seed
    # (a key among the parameters is carried along, not checked).
    sets = {"kernel": np.stack([np.ones((3, 2), np.float32), TINY_ROW.T])}
    keys = jax.random.split(KEY, 2)
    with counting_compiles() as compiles:
        with pytest.raises(ValueError, match=r"^sweep: leaf 'kernel': kernel contains 1 NaN or"):
            fj.sweep(_apply_fn, {"kernel": nan_kernel}, data, seeds=[0], **grid)
        with pytest.raises(
            ValueError,
            match=r"^sweep \(parameter set 1, seed 7\): leaf 'kernel': kernel: 1 row is",
        ):
            fj.sweep(_apply_fn, {**sets, "key": keys}, data, seeds=[3, 7], stacked=True, **grid)
        assert compiles() == 0
    # An NNX module: its state is checked, as program_params checks the module.
    layer = fj.nnx.FusionLinear(3, 2, rngs=nnx.Rngs(0))
    layer.kernel[...] = nan_kernel
    with pytest.raises(ValueError, match=r"^sweep: leaf 'kernel': kernel contains 1 NaN"):
        fj.sweep(layer, None, data, seeds=[0], **grid)
    # Only a module's parameters: a buffer may hold -inf (an additive mask), a Param may not.
    layer.kernel[...] = np.ones((3, 2), np.float32)
    layer.logit_mask = nnx.Variable(np.array([0.0, -np.inf], np.float32))
    graphdef, state = nnx.split(layer)
    check = functools.partial(_check_before_grid, where=None, layouts=None, tile_sizes=())
    check(state, graphdef, stacked=False, seeds=np.array([0]))
    layer.bias[...] = np.array([0.0, np.inf], np.float32)
    graphdef, state = nnx.split(layer)
    with pytest.raises(ValueError, match=r"^sweep: parameter 'bias' contains 1 NaN or Inf"):
        check(state, graphdef, stacked=False, seeds=np.array([0]))
    # The other parameters are checked for NaN and Inf too (a NaN bias made a NaN loss).
    bias = np.zeros(2, np.float32)
    bias[1] = np.nan
    with pytest.raises(ValueError, match=r"^sweep: parameter 'bias' contains 1 NaN or Inf value"):
        fj.sweep(
            lambda p, x: x @ p["kernel"] + p["bias"],
            {"kernel": np.ones((3, 2), np.float32), "bias": bias},
            data,
            seeds=[0],
            **grid,
        )
    # Ordinary kernels pass the check and are swept.
    sets["kernel"][1] = 2.0
    result = fj.sweep(_apply_fn, sets, data, seeds=[3, 7], stacked=True, noise=None, **grid)
    np.testing.assert_array_equal(result.accuracy, np.ones((1, 2, 1)))


def test_rows_just_large_enough_round_trip_and_tiny_single_values_pass():
    from jax.experimental import checkify

    # A row of subnormals is refused too; traced, under checkify.
    checked = checkify.checkify(jax.jit(lambda w: fj.program(w, noise=None)))
    subnormal = np.array([[1.0, 2.0, 3.0], [4e-39, -1e-40, 0.0]], np.float32)
    err, _ = checked(jnp.asarray(subnormal))
    with pytest.raises(checkify.JaxRuntimeError, match="weights contain 1 rows too small"):
        err.throw()
    # Rows from the bound up round-trip at the largest g_max, where their slope is smallest.
    # (With noise, rows below the reference's floor of 1e-10 sit at tiny conductances, which
    # a noise floor in absolute uS reads as about 0: the reference's mapping, not a flush.)
    w = np.array([[4e-36, 2e-36, -1e-36], [1.0, 2.0, 3.0]], np.float32)
    checked_40 = checkify.checkify(jax.jit(lambda w: fj.program(w, noise=None, g_max=40.0)))
    err, out = checked_40(jnp.asarray(w))
    err.throw()
    np.testing.assert_allclose(np.asarray(out), w, rtol=1e-5)
    # A single subnormal in an ordinary row lies far below the row's resolution: programmed
    # as 0, as any value that small would be (0.5 * 2**-24 is the row's last bit).
    np.testing.assert_array_equal(
        np.asarray(fj.program(np.array([[0.5, -0.25, 1e-40]], np.float32), noise=None)),
        [[0.5, -0.25, 0.0]],
    )
    # float16 rows are computed in float32: their smallest values are far above the bound.
    w16 = np.array([[1.0, 3e-6, -6e-8], [6e-8, 0.0, 0.0]], np.float16)
    out16 = np.asarray(fj.program(w16, noise=None))
    assert out16.dtype == np.float16 and np.all((out16 != 0) == (w16 != 0))


@pytest.mark.parametrize(
    "entry", ["program", "program_kernel", "program_params", "layer", "convert_back"]
)
def test_a_read_back_that_overflows_is_refused_not_returned_as_inf(entry):
    # Finite weights near float32's largest value; 20 uS added to every conductance
    # (deterministic) reads row 0 back at 1.5 times its size, beyond float32's range.
    big = np.float32(3e38)
    w = np.array([[big, big / 2, big / 4], [1.0, 2.0, 3.0]], np.float32)
    noise = OffsetNoise(gain=1.0, offset=-20.0)

    def layer():
        model = fj.nnx.FusionLinear(3, 2, noise=noise, rngs=nnx.Rngs(0))
        model.kernel[...] = w.T
        return model.programmed_kernel(KEY)

    call = {
        "program": lambda: fj.program(w, KEY, noise=noise),
        "program_kernel": lambda: fj.program_kernel(w.T, KEY, noise=noise),
        "program_params": lambda: fj.program_params({"d": {"kernel": w.T}}, KEY, noise=noise),
        "layer": layer,
        # the conductances as that noise reads them, converted back
        "convert_back": lambda: fj.convert_back_to_weights(
            fj.convert_to_conductances(w)[0] + 20.0, fj.convert_to_conductances(w)[1]
        ),
    }[entry]
    where = {
        "program": "program: ",
        "program_kernel": "program_kernel: ",
        "program_params": "program_params: leaf 'd/kernel': ",
        "layer": "FusionLinear (kernel (3, 2)): program_kernel: ",
        "convert_back": "convert_back_to_weights: ",
    }[entry]
    with pytest.raises(FloatingPointError, match=re.escape(where)) as err:
        call()
    # Named in the layout given: row 0 of the weights, output 0 of the kernels.
    position = "row 0, column 0" if entry in ("program", "convert_back") else "kernel index (0, 0)"
    assert f"programmed weight is not finite (the first, inf, at {position};" in str(err.value)
    assert "overflows float32" in str(err.value)
    # The same weights noise-free, and ordinary weights with the same noise, are finite.
    np.testing.assert_allclose(np.asarray(fj.program(w, noise=None)), w, rtol=1e-6)
    out = np.asarray(fj.program(w / np.float32(1e30), KEY, noise=noise))
    assert np.all(np.isfinite(out))


def test_a_read_back_overflow_is_reported_under_checkify():
    from jax.experimental import checkify

    noise = OffsetNoise(gain=1.0, offset=-20.0)
    checked = checkify.checkify(jax.jit(lambda w: fj.program(w, KEY, noise=noise)))
    err, _ = checked(jnp.array([[3e38, 1.5e38, 7.5e37]], jnp.float32))
    with pytest.raises(checkify.JaxRuntimeError, match=r"program: 1 programmed weights are NaN"):
        err.throw()


def test_string_t_inference_in_sweep_is_a_type_error():
    with pytest.raises(TypeError, match="sweep: t_inference must be a real number"):
        _check_grid([40.0], 1, [1.0, "1"])
    with pytest.raises(TypeError, match="g_max must be numbers"):
        _check_grid(["40"], 1, [1.0])


# --- the same checks at every entry point --------------------------------------------------


def test_convert_back_refuses_negative_conductances_like_the_reader_and_noise():
    g, params = fj.convert_to_conductances(W)
    bad = g.at[1, 2].set(-0.5)
    with pytest.raises(ValueError, match=r"1 negative value \(smallest -0.5\) in row \[1\]"):
        fj.convert_back_to_weights(bad, params)
    with pytest.raises(ValueError, match="must be >= 0"):
        CHIP.sample(bad, KEY, g_max=40.0, t_inference=0.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("arg", ["x", "y"])
def test_regression_slope_refuses_nan_and_inf(bad, arg):
    x, y = np.ones(SHAPE, np.float32), np.ones(SHAPE, np.float32)
    (x if arg == "x" else y)[2, 5] = bad
    with pytest.raises(ValueError, match=rf"^{arg} contains 1 NaN or Inf value in row \[2\]"):
        fj.regression_slope(x, y)


@pytest.mark.parametrize("shape", [(3, 0), (0, 3), (2, 0, 4), (0, 3, 4)])
def test_program_params_on_an_empty_kernel_names_the_leaf(shape):
    params = {"dense": {"kernel": jnp.zeros(shape)}}
    layouts = {"dense/kernel": fj.layout.KernelAxes.dense().stacked()} if len(shape) > 2 else None
    with pytest.raises(ValueError, match=r"leaf 'dense/kernel'.*empty \(shape"):
        fj.program_params(params, KEY, layouts=layouts)


# --- files ----------------------------------------------------------------------------------


def small_chip():
    return ChipFile.from_layers({"a": np.full((2, 3), 10.0), "b": np.full((1, 2), 40.0)})


def test_atomic_replace_keeps_the_mode_of_the_target(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("old")
    os.chmod(path, 0o600)
    write_chip_file(path, small_chip())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert read_chip_file(path).names == ("a", "b")


def test_atomic_replace_writes_through_a_symlink(tmp_path):
    real = tmp_path / "data" / "m.csv"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    write_chip_file(link, small_chip())
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert read_chip_file(real).names == ("a", "b")
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "data" / "new.csv")
    write_chip_file(dangling, small_chip())  # as open(): creates the link's target
    assert dangling.is_symlink() and (tmp_path / "data" / "new.csv").exists()


def test_no_temporary_file_exists_until_the_data_is_ready(tmp_path):
    with _atomic.atomic_open(tmp_path / "m.csv") as fh:
        fh.write("partial")
        assert os.listdir(tmp_path) == []  # a kill here leaves nothing behind
    assert (tmp_path / "m.csv").read_text() == "partial"


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_dead_processes_are_cleaned_by_the_next_write(tmp_path):
    stale = tmp_path / f".m.csv.{_dead_pid()}.0123456789ab.tmp"
    stale.write_bytes(b"")
    live = tmp_path / f".m.csv.{os.getppid()}.0123456789ab.tmp"  # a running process's
    live.write_bytes(b"")
    other = tmp_path / ".other.csv.1.0123456789ab.tmp"
    other.write_bytes(b"")
    write_chip_file(tmp_path / "m.csv", small_chip())
    assert sorted(os.listdir(tmp_path)) == sorted(["m.csv", live.name, other.name])


def test_errors_name_the_target_not_a_temporary_file(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", src)

    monkeypatch.setattr(_atomic.os, "replace", refuse)
    target = tmp_path / "m.csv"
    with pytest.raises(PermissionError) as err:
        write_chip_file(target, small_chip())
    assert err.value.filename == str(target) and ".tmp" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_missing_folder_error_names_the_target(tmp_path):
    target = tmp_path / "nope" / "m.csv"
    with pytest.raises(FileNotFoundError) as err:
        write_chip_file(target, small_chip())
    assert err.value.filename == str(target)


FILES = {"sweep.csv": b"new csv", "sweep.json": b"{}", "sweep.png": b"png", "table.txt": b"t"}


def test_folder_update_is_all_or_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    old = {name: f"old {name}".encode() for name in ("sweep.csv", "sweep.json")}
    for name, content in old.items():
        (out / name).write_bytes(content)
    (out / "mine.txt").write_bytes(b"the user's")
    real_replace = os.replace
    calls = []

    def fail_third(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", src)
        real_replace(src, dst)

    monkeypatch.setattr(_atomic.os, "replace", fail_third)
    with pytest.raises(OSError, match="No space left") as err:
        cli_common.write_files(out, FILES)
    assert ".tmp" not in str(err.value)
    monkeypatch.setattr(_atomic.os, "replace", real_replace)
    assert sorted(os.listdir(out)) == ["mine.txt", "sweep.csv", "sweep.json"]
    for name, content in old.items():
        assert (out / name).read_bytes() == content
    cli_common.write_files(out, FILES)
    assert sorted(os.listdir(out)) == sorted([*FILES, "mine.txt"])
    assert all((out / n).read_bytes() == c for n, c in FILES.items())


def test_failed_out_removes_the_parents_it_created(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(5, "Input/output error", src)

    monkeypatch.setattr(_atomic.os, "replace", refuse)
    with pytest.raises(OSError) as err:
        cli_common.write_files(tmp_path / "a" / "b" / "c", FILES)
    assert str(tmp_path / "a" / "b" / "c") in str(err.value.filename)
    assert os.listdir(tmp_path) == []


def test_failed_out_keeps_parents_that_existed(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    monkeypatch.setattr(_atomic.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError):
        cli_common.write_files(tmp_path / "a" / "b" / "c", FILES)
    assert os.listdir(tmp_path) == ["a"] and os.listdir(tmp_path / "a") == []


# --- the chip-file reader -------------------------------------------------------------------


def _p(path):
    """The path as a regular expression matching itself."""
    return re.escape(str(path))


HEADER = "1,2\nAnalogLinearMapped,AnalogLinearMapped\n6,2\n2,1\n3,2\na,b\r\n"


def test_negative_dimension_names_file_line_and_layer(tmp_path):
    path = tmp_path / "neg.csv"
    path.write_text("1\nL\n-6\n-2\n3\nfc\n" + ",".join(["1"] * 6) + "\n")
    with pytest.raises(
        ValueError, match=rf"{_p(path)}: line 4 \(heights\), position 1 \(layer 'fc'\)"
    ):
        read_chip_file(path)


def test_count_mismatch_names_file_and_line(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("1\nL\n5\n2\n3\nfc\n1,1,1,1,1\n")
    with pytest.raises(ValueError, match=rf"{_p(path)}: line 3 \(counts\).*count 5 != height 2"):
        read_chip_file(path)


@pytest.mark.parametrize("line", [2, 6, 7])
def test_non_utf8_file_names_file_and_line(tmp_path, line):
    lines = HEADER.encode().split(b"\n")[:6] + [b"10,10,10,10,10,10", b"40,40", b""]
    lines[line - 1] = lines[line - 1][:1] + b"\xff\xfe" + lines[line - 1][1:]
    path = tmp_path / "latin.csv"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=rf"{_p(path)}: line {line}: byte 0xff is not UTF-8"):
        read_chip_file(path)


def test_oversized_file_is_refused_after_reading_only_the_header(tmp_path):
    path = tmp_path / "bogus.csv"
    with open(path, "wb") as fh:
        fh.write(HEADER.encode())
        chunk = b"1" * (1 << 20)
        for _ in range(38):  # a 38 MB file whose header announces 8 values
            fh.write(chunk)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"{_p(path)}: the file has 39,8.* bytes, more than"):
            read_chip_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_header_announcing_more_than_the_chip_is_refused(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text("1\nL\n2000000\n1000\n2000\nfc\n1\n")
    with pytest.raises(ValueError, match=rf"{_p(path)}: line 3 \(counts\).*2,000,000 weights"):
        read_chip_file(path)


def test_overlong_header_line_is_refused(tmp_path):
    path = tmp_path / "long.csv"
    path.write_bytes(b"1" * (2 << 20))
    with pytest.raises(ValueError, match=rf"{_p(path)}: line 1 is longer than"):
        read_chip_file(path)


def test_the_shipped_files_and_a_full_chip_still_read(tmp_path):
    for name in ("programmed.csv", "target_g40.csv"):
        path = fj.datasets.lenet5_path(name)
        if os.path.exists(path):
            assert read_chip_file(path).names == ("0", "3", "8", "10")
    rng = np.random.default_rng(0)
    # The longest values a float64 repr gives, on a whole chip.
    full = {"x": (rng.random((512, 2048)) * 1e-300 + 1.2345678901234567e-300) * 1e290}
    path = tmp_path / "full.csv"
    write_chip_file(path, ChipFile.from_layers(full))
    assert read_chip_file(path).layers["x"].shape == (512, 2048)


# --- Flax layers under the same checks -------------------------------------------------------


def test_linen_layer_refuses_nan_t_inference_at_init():
    with pytest.raises(ValueError, match=r"FusionDense: t_inference must be a finite number"):
        fj.linen.FusionDense(2, t_inference=float("nan")).init(KEY, jnp.ones((1, 3)))


def test_nnx_layer_refuses_negative_t_inference():
    with pytest.raises(ValueError, match=r"FusionLinear: t_inference must be a finite number"):
        fj.nnx.FusionLinear(3, 2, t_inference=-5.0, rngs=nnx.Rngs(0))


# --- properties over settings and magnitudes ------------------------------------------------


@given(
    t=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**40), 2**40),
    ),
    noise=st.sampled_from(
        [PCMLikeNoise(), FusionChipNoise.lenet5_readback(read_noise=True, read_noise_scale=1.0)]
    ),
)
def test_t_inference_is_accepted_exactly_when_finite_and_non_negative(t, noise):
    # Valid times up to float32's largest give finite weights (read noise and
    # drift at 1e38 s included); others are refused, naming the argument.
    f32 = np.finfo(np.float32)
    in_range = isinstance(t, int) or t == 0 or float(f32.tiny) <= t <= float(f32.max)
    valid = bool(np.isfinite(t) and t >= 0 and in_range)
    if valid:
        out = fj.program(W, KEY, noise=noise, t_inference=t)
        assert bool(jnp.all(jnp.isfinite(out)))
    else:
        with pytest.raises(ValueError, match="program: t_inference(:| must be a finite number)"):
            fj.program(W, KEY, noise=noise, t_inference=t)


@given(value=st.floats(min_value=-1e308, max_value=1e308, allow_subnormal=True))
def test_float64_values_convert_exactly_when_float32_holds_them(value):
    w = np.array([[1.0, value, -2.0], [3.0, 4.0, 5.0]])
    mag = abs(value)
    f32 = np.finfo(np.float32)
    if value == 0 or float(f32.tiny) <= mag <= float(f32.max):
        g, params = fj.convert_to_conductances(w)
        np.testing.assert_array_equal(np.asarray(params.original_weights), w.astype(np.float32))
        assert bool(jnp.all(jnp.isfinite(g)))
    else:
        with pytest.raises(ValueError, match=r"out of range for float32.*row 0, column 1"):
            fj.convert_to_conductances(w)


def test_traced_settings_are_reported_under_checkify():
    from jax.experimental import checkify

    def run(t):
        return fj.program(W, KEY, noise=PCMLikeNoise(), t_inference=t)

    checked = checkify.checkify(jax.jit(run), errors=checkify.user_checks)
    err, _ = checked(jnp.float32(float("nan")))
    assert "t_inference must be a finite number of seconds >= 0" in str(err.get())
    err, out = checked(jnp.float32(3600.0))
    assert err.get() is None and bool(jnp.all(jnp.isfinite(out)))


def test_a_layer_with_a_nan_kernel_says_which_layer():
    """The Fusion layers and Linen's fusionize name the layer (NNX: its class and kernel
    shape, it does not know its path; Linen: its path) in a NaN/Inf error."""
    import flax.linen as nn
    from flax import nnx

    layer = fj.nnx.FusionLinear(3, 5, noise=None, rngs=nnx.Rngs(0))
    layer.kernel[...] = layer.kernel[...].at[1, 2].set(jnp.inf)
    with pytest.raises(ValueError, match=r"^FusionLinear \(kernel \(3, 5\)\): kernel contains 1"):
        layer(jnp.ones((1, 3)))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(5, name="enc")(x)

    x = jnp.ones((1, 3))
    variables = Net().init(jax.random.key(0), x)
    bad = {"params": {"enc": dict(variables["params"]["enc"])}}
    bad["params"]["enc"]["kernel"] = bad["params"]["enc"]["kernel"].at[0, 4].set(jnp.nan)
    with pytest.raises(ValueError, match=r"^enc \(Dense\): kernel contains 1 NaN or Inf value"):
        fj.linen.fusionize(Net(), noise=None).apply(bad, x)


def test_traced_checks_name_the_layer_or_leaf_under_checkify():
    """Inside jit a bad kernel is reported by checkify naming what a concrete error names:
    the NNX layer (class and kernel shape), the Linen layer (its path: here the second of
    two layers), program_params' leaf; a traced read-back overflow names the layer too."""
    import flax.linen as nn
    from jax.experimental import checkify

    def reported(f, *args):
        err, _ = checkify.checkify(jax.jit(f))(*args)
        return str(err.get())

    layer = fj.nnx.FusionLinear(3, 5, noise=None, rngs=nnx.Rngs(0))
    layer.kernel[...] = layer.kernel[...].at[1, 2].set(jnp.nan)
    graphdef, state = nnx.split(layer)
    x = jnp.ones((1, 3))
    message = reported(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
    assert message.startswith("FusionLinear (kernel (3, 5)): kernel contains 1 NaN or Inf"), message

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(5, name="dec")(nn.Dense(5, name="enc")(x))

    variables = Net().init(jax.random.key(0), x)
    bad = jax.tree.map(lambda a: a, variables)
    bad["params"]["dec"]["kernel"] = bad["params"]["dec"]["kernel"].at[4, 0].set(jnp.inf)
    message = reported(fj.linen.fusionize(Net(), noise=None).apply, bad, x)
    assert message.startswith("dec (Dense): kernel contains 1 NaN or Inf"), message
    message = reported(lambda p: fj.program_params(p, None, noise=None), bad)
    assert message.startswith("program_params: leaf 'params/dec/kernel': kernel contains 1"), (
        message
    )
    # An error raised while tracing names the leaf once.
    with pytest.raises(TypeError) as err:
        jax.jit(lambda k: fj.program_params({"d": {"kernel": k}}, None, noise=None))(
            jnp.ones((3, 2), jnp.complex64)
        )
    assert str(err.value).startswith("program_params: leaf 'd/kernel': kernel must be a real")
    assert str(err.value).count("leaf 'd/kernel'") == 1
    # The good model reports nothing.
    assert reported(fj.linen.fusionize(Net(), noise=None).apply, variables, x) == "None"

    big = np.float32(3e38)
    noise = OffsetNoise(gain=1.0, offset=-20.0)  # reads row 0 back at 1.5 times its size
    overflowing = fj.nnx.FusionLinear(3, 2, noise=noise, rngs=nnx.Rngs(0))
    overflowing.kernel[...] = np.array([[big, 1.0], [big / 2, 2.0], [big / 4, 3.0]], np.float32)
    graphdef, state = nnx.split(overflowing)
    message = reported(lambda s: nnx.merge(graphdef, s).programmed_kernel(KEY), state)
    assert message.startswith(
        "FusionLinear (kernel (3, 2)): program_kernel: 1 programmed weights are NaN or Inf"
    ), message
