# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # fusion_jax quickstart
#
# IBM's Fusion chip stores each weight of a neural network as the conductance
# of one phase-change-memory (PCM) device, in micro-siemens (uS). Before a
# network can run on it, every weight matrix has to be mapped to conductances
# in `[0, g_max]`; after programming, the conductances the chip reads back
# are mapped to weights again. fusion_jax does both, as aihwkit's
# `FusionConductanceConverter` does, but as pure, jitted, differentiable JAX
# functions.
#
# This notebook walks through the core API:
#
# 1. weights to conductances, and what they look like;
# 2. the noise-free round trip back to weights;
# 3. degenerate rows, where aihwkit loses weights and fusion_jax does not;
# 4. the aihwkit-style class API;
# 5. programming onto the simulated chip with noise (`fj.program`);
# 6. a g_max sweep with `jax.vmap`, comparing the noise model calibrated on
#    the real chip with aihwkit's statistical PCM model.
#
# Everything runs on a laptop CPU in well under a minute.

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import fusion_jax as fj

# The tests set this to run the notebook with smaller sizes.
FAST = os.environ.get("FUSION_JAX_NOTEBOOK_FAST") == "1"

plt.rcParams.update({"figure.figsize": (6, 4), "figure.dpi": 80})
np.set_printoptions(precision=3, suppress=True)
print("fusion_jax", fj.__version__, "| jax", jax.__version__, "|", jax.devices()[0].platform)

# %% [markdown]
# ## 1. Weights to conductances
#
# The layout is aihwkit's: a weight matrix is `[out, in]`, **one row per
# output** (on the chip each output is one bit-line column). Each row is
# scaled on its own so that its largest weight lands on `g_max`:
#
# $$s_r = \frac{g_{max}}{\max_j |W_{rj}|}, \qquad
#   G_{rj} = \mathrm{clip}(|W_{rj}\, s_r|, 0, g_{max}).$$
#
# One device holds `|w|`; the sign is carried by which of a pair of lines the
# device sits on, so it is not part of `G`. Neither the sign nor the scale is
# stored in the result: the import recovers both from the original weights,
# which `FusionParams` keeps.
#
# Here is a random 32 x 64 layer whose rows have very different magnitudes
# (as in trained networks), converted at `g_max = 40` uS.

# %%
key_w, key_s = jax.random.split(jax.random.key(0))
row_scale = jnp.exp(jax.random.normal(key_s, (32, 1)))  # magnitudes vary by row
w = jax.random.normal(key_w, (32, 64)) * row_scale

g, params = fj.convert_to_conductances(w, g_max=40.0)
print("conductances:", g.shape, g.dtype, f"in [{float(g.min()):.2f}, {float(g.max()):.2f}] uS")
print("largest conductance of every row:", np.unique(np.asarray(g.max(axis=1))))
print("params hold the original weights:", type(params).__name__, params.original_weights.shape)

# %% [markdown]
# Side by side: the weights (signed, their scale varies from row to row) and
# the conductances (magnitudes only, every row stretched to reach 40 uS).
# The per-row scaling is what lets a row of small weights still use the full
# conductance range of its devices.

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), constrained_layout=True)
lim = float(jnp.abs(w).max())
im0 = axes[0].imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
axes[0].set(title="weights W [out, in]", xlabel="input", ylabel="output row")
fig.colorbar(im0, ax=axes[0])
im1 = axes[1].imshow(g, cmap="viridis", vmin=0, vmax=40, aspect="auto")
axes[1].set(title="conductances G (uS)", xlabel="input")
fig.colorbar(im1, ax=axes[1])
plt.show()

# %% [markdown]
# The histogram of all conductances: most devices sit well below `g_max`,
# because a row's largest weight is typically a few times its typical one.
# That matters on the real chip, whose noise has a floor in absolute uS
# (section 6 and notebook 03).

# %%
fig, ax = plt.subplots()
ax.hist(np.asarray(g).ravel(), bins=40, color="tab:blue")
ax.set(xlabel="target conductance (uS)", ylabel="devices", title="conductances at g_max = 40 uS")
plt.show()

# %% [markdown]
# ## 2. The round trip
#
# `convert_back_to_weights` does what the chip's import does: with
# `X = G * sign(W)`, it fits per row the least-squares line `W_r = a_r X_r + b_r`
# and returns `a_r X_r`. With noise-free conductances the slope is exactly
# `1 / s_r` and the weights come back to float rounding. With programmed
# (noisy, drifted) conductances, `a_r` is each row's gain against the
# intended weights: a per-row drift compensation for free.

# %%
w_back = fj.convert_back_to_weights(g, params)
print("max |w_back - w| =", float(jnp.abs(w_back - w).max()))
print("max |w|          =", float(jnp.abs(w).max()))

# %% [markdown]
# ## 3. Degenerate rows: where the reference loses weights
#
# The least-squares slope needs the row's signed conductances to vary. When
# they do not (every weight of the row equal, or a layer with a single
# input), aihwkit's fit returns slope 0 and the **whole row becomes 0**; a
# layer with one input is wiped out entirely.
#
# fusion_jax falls back, on those rows only, to the slope through the origin
# `sum(x*y) / sum(x*x)`, which is exact when noise-free. `strict_aihwkit=True`
# reproduces the reference bit for bit. The rows below are the ones measured
# with aihwkit 1.1.0 (see `REFERENCE.md`).

# %%
rows = {
    "all equal": [0.3, 0.3, 0.3],
    "all zero": [0.0, 0.0, 0.0],
    "equal |w|, mixed signs": [0.7, 0.7, -0.7],
    "ordinary": [1.0, -2.0, 0.5],
}
w_rows = jnp.array(list(rows.values()))
g_rows, p_rows = fj.convert_to_conductances(w_rows)
default = fj.convert_back_to_weights(g_rows, p_rows)
strict = fj.convert_back_to_weights(g_rows, p_rows, strict_aihwkit=True)

print(f"{'row':24} {'original':>22} {'fusion_jax default':>22} {'strict_aihwkit=True':>22}")
for name, a, b, c in zip(rows, w_rows, default, strict, strict=True):
    print(
        f"{name:24} {np.array2string(np.asarray(a)):>22} "
        f"{np.array2string(np.asarray(b)):>22} {np.array2string(np.asarray(c)):>22}"
    )

# %% [markdown]
# A layer with a single input (`[out, in] = [3, 1]`), e.g. the first layer of
# a network fed one scalar feature: every row is "constant".

# %%
w_single = jnp.array([[0.5], [-1.2], [2.0]])
g_single, p_single = fj.convert_to_conductances(w_single)
print("original      ", np.asarray(w_single).ravel())
print("default       ", np.asarray(fj.convert_back_to_weights(g_single, p_single)).ravel())
# (+ 0.0 prints -0.0 as 0.0)
print(
    "strict_aihwkit",
    np.asarray(fj.convert_back_to_weights(g_single, p_single, strict_aihwkit=True)).ravel() + 0.0,
)

# %% [markdown]
# ## 4. The aihwkit-style class
#
# Code written against aihwkit ports by changing the import:
# `fj.FusionConductanceConverter` has the same constructor and call shapes,
# a list of one conductance matrix and the dict `{"original_weights": w}`.
# Underneath it is the same vectorised computation (no Python loop over rows).

# %%
converter = fj.FusionConductanceConverter(g_max=25)
[g_list], params_dict = converter.convert_to_conductances(w_rows)
print(converter)
print("params keys:", list(params_dict))
print(converter.convert_back_to_weights([g_list], params_dict))

# %% [markdown]
# `g_max` outside the chip's range [10, 40] uS is refused with the
# reference's error:

# %%
try:
    fj.FusionConductanceConverter(g_max=50)
except fj.ArgumentError as err:
    print(f"{type(err).__name__}: {err}")

# %% [markdown]
# ## 5. Programming onto the simulated chip
#
# `fj.program` is the whole export -> chip -> import path as one function:
# convert, apply a conductance-space noise model to `|G|`, convert back with
# the per-row regression. Two noise models ship with fusion_jax:
#
# * `fj.noise.FusionChipNoise.lenet5_readback()` (the default): fitted on
#   80,000 devices read back from a real Fusion chip (notebook 03). Its
#   spread and offset are in **absolute** uS.
# * `fj.noise.PCMLikeNoise()`: aihwkit's statistical PCM model (programming
#   noise, drift, 1/f read noise), where every term scales with `g_max`.
#
# `t_inference` is the time in seconds since programming at which the chip is
# read; the chip model was calibrated at one hour. `fj.program` is jittable
# and differentiable, so it also sits inside a training step (notebook 02).

# %%
key = jax.random.key(42)
w_chip = fj.program(w, key, g_max=40.0, t_inference=3600.0)
w_pcm = fj.program(w, key, g_max=40.0, noise=fj.noise.PCMLikeNoise(), t_inference=3600.0)


def relative_error(w_hat: jax.Array, w_ref: jax.Array) -> float:
    """Frobenius norm of the error relative to that of the weights."""
    return float(jnp.linalg.norm(w_hat - w_ref) / jnp.linalg.norm(w_ref))


print(f"relative weight error, chip model: {relative_error(w_chip, w):.3f}")
print(f"relative weight error, PCM model:  {relative_error(w_pcm, w):.3f}")

# %% [markdown]
# Programmed against intended weights, per weight. Each row is normalised by
# its largest weight so that all rows share one axis. Under the chip model
# the cloud is wider, and small weights are pulled towards 0: the chip reads
# conductances back with an offset of about -1 uS and clamps them at 0. On
# the signed conductances that offset shifts every weight towards 0, whatever
# its sign, which neither the per-row gain nor the intercept can undo.

# %%
norm = jnp.abs(w).max(axis=1, keepdims=True)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharey=True, constrained_layout=True)
for ax, w_hat, title in ((axes[0], w_chip, "chip model"), (axes[1], w_pcm, "PCMLikeNoise")):
    ax.scatter(np.asarray(w / norm).ravel(), np.asarray(w_hat / norm).ravel(), s=2, alpha=0.4)
    ax.plot([-1, 1], [-1, 1], "k--", lw=1, label="y = x")
    ax.set(title=f"{title} (g_max 40 uS, 1 h)", xlabel="intended w / max|w_row|")
    ax.legend(loc="upper left")
axes[0].set_ylabel("programmed w / max|w_row|")
plt.show()

# %% [markdown]
# ## 6. A g_max sweep with `jax.vmap`
#
# Which `g_max` should a model be programmed at? Under the PCM model every
# noise term scales with `g_max`, so the relative weight error cannot depend
# on it. The real chip's read-back has a spread that does **not** shrink in
# proportion to the target: a larger `g_max` lifts the weights above that
# floor.
#
# `g_max` may be a traced value, so a whole sweep, over `g_max` and over
# independent chip draws (keys), is one compiled function: `jax.vmap` twice
# under one `jax.jit`.

# %%
n_g, n_keys = (7, 4) if FAST else (16, 16)
g_grid = jnp.linspace(10.0, 40.0, n_g)
keys = jax.random.split(jax.random.key(1), n_keys)


def error_at(g_max, key, noise):
    w_hat = fj.program(w, key, g_max=g_max, noise=noise, t_inference=3600.0)
    return jnp.linalg.norm(w_hat - w) / jnp.linalg.norm(w)


# inner vmap: over keys; outer vmap: over g_max; the noise model is shared.
sweep_errors = jax.jit(jax.vmap(jax.vmap(error_at, (None, 0, None)), (0, None, None)))
errors = {
    "chip model (calibrated)": sweep_errors(g_grid, keys, fj.noise.default_noise()),
    "PCMLikeNoise": sweep_errors(g_grid, keys, fj.noise.PCMLikeNoise()),
}
for name, e in errors.items():
    print(f"{name:24} g_max 10: {float(e[0].mean()):.3f}   g_max 40: {float(e[-1].mean()):.3f}")

# %%
fig, ax = plt.subplots()
for name, e in errors.items():
    e = np.asarray(e)
    mean, std = e.mean(axis=1), e.std(axis=1)
    ax.plot(g_grid, mean, marker="o", ms=3, label=name)
    ax.fill_between(g_grid, mean - std, mean + std, alpha=0.2)
ax.set(
    xlabel="g_max (uS)",
    ylabel="relative weight error",
    title=f"32x64 layer read 1 h after programming ({n_keys} chip draws)",
)
ax.set_ylim(bottom=0)
ax.legend()
ax.grid(alpha=0.3)
plt.show()

# %% [markdown]
# The calibrated chip model rewards the largest `g_max`: the error roughly
# halves from 10 to 40 uS. The PCM model's curve is flat, by construction.
# A sweep under the PCM model alone would therefore conclude that `g_max`
# does not matter; measured chip data says it does.
#
# Where next:
#
# * `02_hardware_aware_training`: train a classifier through `fj.program`
#   (hardware-aware training) and sweep g_max and inference time on the
#   accuracy;
# * `03_real_chip`: the real chip's LeNet5 read-back, and how the noise model
#   was calibrated and validated on it.
