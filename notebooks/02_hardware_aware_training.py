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
# # Hardware-aware training and g_max sweeps
#
# A network trained in floating point loses accuracy once its weights are
# programmed onto the Fusion chip: each weight comes back with the chip's
# device-to-device spread, an offset, and drift over time (notebook 03 shows
# the real chip's numbers). *Hardware-aware training* makes the network
# robust to this by training through a simulation of the chip: in every
# training step each kernel is programmed with a fresh noise draw
# (`fj.program`), and the gradient flows through the programming.
#
# This notebook trains a small classifier on scikit-learn's handwritten
# digits (bundled with scikit-learn, no download) twice, digitally and
# hardware-aware, with optax; programs both onto the simulated chip
# (`fj.program_params`); and sweeps the accuracy over `g_max` and the time
# since programming (`fj.sweep`).

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import fusion_jax as fj
from fusion_jax.digits import MLP, load_digits_split
from fusion_jax.plotting import plot_sweep
from fusion_jax.training import evaluate, to_apply_fn, train

# The tests set this to run the notebook with smaller sizes.
FAST = os.environ.get("FUSION_JAX_NOTEBOOK_FAST") == "1"
EPOCHS = 4 if FAST else 40
HIDDEN = (16,) if FAST else (32,)

plt.rcParams.update({"figure.figsize": (6, 4), "figure.dpi": 80})
np.set_printoptions(precision=3, suppress=True)

# %% [markdown]
# ## The data
#
# 1797 grey-scale images of 8 x 8 pixels, ten classes; `load_digits_split`
# scales pixels to [0, 1] and holds out a stratified quarter for testing.

# %%
data = load_digits_split(seed=0)
print("train", data.x_train.shape, "test", data.x_test.shape)

fig, axes = plt.subplots(1, 8, figsize=(8, 1.4))
for ax, image, label in zip(axes, data.x_train[:8], data.y_train[:8], strict=True):
    ax.imshow(image.reshape(8, 8), cmap="gray_r")
    ax.set(title=int(label), xticks=[], yticks=[])
plt.show()

# %% [markdown]
# ## The building block: `fj.nnx.FusionLinear`
#
# `FusionLinear` is an `nnx.Linear` (same arguments, same parameters) whose
# kernel is programmed onto the simulated chip before it is used. Each output
# feature is one chip row with its own conductance scale. Its modes follow
# `nnx.Dropout`:
#
# * training mode: every call programs the kernel afresh with a new key from
#   the layer's `noise` RNG stream;
# * evaluation mode (`layer.eval()`): the digital kernel, exactly as
#   `nnx.Linear`.
#
# `g_max`, the noise model (the calibrated chip model by default),
# `t_inference` and the gradient (`"exact"` through the programming, or
# `"ste"`, straight-through) are set per layer.

# %%
layer = fj.nnx.FusionLinear(4, 3, g_max=10.0, t_inference=86400.0, rngs=nnx.Rngs(params=0, noise=1))
x = jnp.ones((1, 4))
print("training mode, two calls:", layer(x), layer(x), sep="\n  ")
layer.eval()
print("evaluation mode (digital):", layer(x), sep="\n  ")
print("kernel as programmed with a given key:\n", layer.programmed_kernel(jax.random.key(0)))

# %% [markdown]
# ## Two models, trained with optax
#
# `fusion_jax.digits.MLP` builds the same multilayer perceptron either from
# `nnx.Linear` (digital) or from `FusionLinear` (hardware-aware, here
# programmed at `g_max = 10` uS and read one day after programming: the
# smallest `g_max` of the sweep below, where the chip costs the most
# accuracy). Both start from the same initial
# weights. `fusion_jax.training.train` takes the arrays and an optax
# optimizer (Adam here), one `jax.lax.scan` per epoch; for the
# hardware-aware model every step sees a new chip.

# %%
digital = MLP(hidden=HIDDEN, rngs=nnx.Rngs(params=0))
aware = MLP(
    hidden=HIDDEN, fusion={"g_max": 10.0, "t_inference": 86400.0}, rngs=nnx.Rngs(params=0, noise=1)
)
print(type(digital.layers[0]).__name__, "vs", type(aware.layers[0]).__name__)

digital, digital_history = train(
    digital, data.x_train, data.y_train, optimizer=optax.adam(1e-2), epochs=EPOCHS
)
aware, aware_history = train(
    aware, data.x_train, data.y_train, optimizer=optax.adam(1e-2), epochs=EPOCHS
)

fig, ax = plt.subplots()
ax.plot(digital_history.epoch_loss, label="digital")
ax.plot(aware_history.epoch_loss, label="hardware-aware (loss on programmed weights)")
ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
ax.legend()
plt.show()

# %% [markdown]
# ## Programming the trained models onto the chip
#
# `to_apply_fn` splits a model into a pure forward pass
# `apply_fn(params, x)` and its parameters. Both models have parameters of
# the same structure, so one `apply_fn` evaluates both.
#
# `fj.program_params` writes a whole model to the simulated chip **once**:
# every kernel is programmed under its own key (biases stay digital), and the
# whole test set is classified with that one programmed copy, as on the real
# chip.

# %%
apply_fn, digital_params = to_apply_fn(digital)
_, aware_params = to_apply_fn(aware)
x_test, y_test = data.x_test, data.y_test

key = jax.random.key(7)
print(f"{'':16} {'clean weights':>14} {'on chip, g_max 10 uS, 1 day':>28}")
for name, params in (("digital", digital_params), ("hardware-aware", aware_params)):
    on_chip = fj.program_params(params, key, g_max=10.0, t_inference=86400.0)
    clean = float(evaluate(apply_fn, params, x_test, y_test))
    programmed = float(evaluate(apply_fn, on_chip, x_test, y_test))
    print(f"{name:16} {clean:>14.1%} {programmed:>28.1%}")

# %% [markdown]
# ## Sweeping g_max and the inference time
#
# One chip draw says little: `fj.sweep` evaluates a grid of `g_max`, seeds
# (independent chips) and inference times. The grid is flattened and
# evaluated with `jax.vmap` inside one `jax.jit`, so the sweep compiles once
# whatever its values (and is sharded over several devices when there are).
# Seed `s` is the same chip draw at every g_max and time, and for both
# models, so the comparisons are paired.

# %%
if FAST:
    grid = {"g_max": [10.0, 25.0, 40.0], "seeds": 2, "t_inference": [1.0, 86400.0]}
else:
    grid = {
        "g_max": [10.0, 15.0, 20.0, 25.0, 30.0, 40.0],
        "seeds": 8,
        "t_inference": [1.0, 3600.0, 86400.0, 3.15e7],
    }
eval_data = (x_test, y_test)
sweep_digital = fj.sweep(apply_fn, digital_params, eval_data, label="digital", **grid)
sweep_aware = fj.sweep(apply_fn, aware_params, eval_data, label="hardware-aware", **grid)
print(sweep_digital)
print()
print(sweep_aware)

# %% [markdown]
# `fusion_jax.plotting.plot_sweep` draws a sweep: accuracy against `g_max`,
# one colour per inference time, the band is +-1 standard deviation over
# seeds (chips).

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True, constrained_layout=True)
plot_sweep([sweep_digital, sweep_aware], ax=axes)
plt.show()

# %% [markdown]
# Two things stand out.
#
# * **g_max matters.** Under the calibrated chip noise, whose spread has a
#   floor in absolute uS, small `g_max` puts the weights closer to that floor
#   and costs accuracy. The digital model gains accuracy all the way to
#   40 uS; the hardware-aware one gains little above about 25 uS. (Under
#   aihwkit's PCM model every noise term scales with `g_max` and the curves
#   would be flat; see notebook 01.)
# * **Hardware-aware training helps most where the chip is worst**, at
#   small `g_max`, where it recovers most of the accuracy the digital model
#   loses, and it shrinks the spread between chips. Here it costs nothing
#   on the clean (unprogrammed) weights, and at `g_max = 40` uS the gap
#   between the two models narrows to about 1 point.
#
# The paired per-seed gain at the training point:

# %%
i_g = list(sweep_aware.g_max).index(10.0)
i_t = list(sweep_aware.t_inference).index(86400.0)
gain = 100 * (sweep_aware.accuracy[i_g, :, i_t] - sweep_digital.accuracy[i_g, :, i_t])
print(
    f"g_max 10 uS, 1 day: hardware-aware minus digital = {gain.mean():+.1f} points "
    f"(per chip: {np.array2string(gain, precision=1)})"
)

# %% [markdown]
# ## Where next
#
# * `fusion_jax.training.hardware_aware_experiment` runs this comparison for
#   several training seeds at once (the models are trained together under
#   `jax.vmap`), for the MLP or a small CNN built from `fj.nnx.FusionConv`;
#   `fusion-jax sweep` runs it from the command line.
# * `fj.linen.FusionDense` and `fj.linen.FusionConv` are the same layers for
#   Flax Linen models.
# * Notebook 03 shows where the chip noise model comes from.
