"""Sweeps over g_max, seeds and inference times: one compiled, sharded program.

Every grid point programs the model's kernels once (:func:`program_params`)
and evaluates accuracy and cross-entropy on the evaluation data. The points
are evaluated with ``jax.vmap`` inside one ``jax.jit``, in fixed-size chunks
(compiled once whatever the g_max values), and with several devices the
point axis is sharded over a device mesh with ``jax.sharding``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, ArrayLike, Float, Int

from fusion_jax import _validation, tiles
from fusion_jax._atomic import atomic_open
from fusion_jax.distributed import _global_array
from fusion_jax.model_programming import (
    Layouts,
    _check_kernels_only,
    freeze_layouts,
    kernel_layouts,
    program_params,
)
from fusion_jax.programming import DEFAULT_NOISE, NoiseModel, resolve_noise
from fusion_jax.units import format_time

__all__ = ["SweepResult", "sweep"]

ApplyFn = Callable[[Any, Float[Array, "batch ..."]], Float[Array, "batch classes"]]

_AXIS = "grid"
_DEFAULT_MEMORY_BUDGET = 1 << 30


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Metrics of a sweep on the grid ``g_max x seeds x t_inference``.

    Attributes:
        g_max: The g_max values (uS), ``[G]``.
        seeds: The seeds, ``[S]``; seed ``s`` programs with ``jax.random.key(s)``.
        t_inference: The inference times (s), ``[T]``.
        accuracy: Top-1 accuracy, ``[G, S, T]``.
        loss: Mean softmax cross-entropy, ``[G, S, T]``.
        label: A name for this result (for example the model), used in tables.

    Example:
        >>> import numpy as np
        >>> from fusion_jax import SweepResult
        >>> acc = np.array([[[0.80], [0.84]], [[0.95], [0.97]]])   # 2 g_max x 2 seeds x 1 t
        >>> r = SweepResult(np.array([10.0, 40.0]), np.arange(2), np.array([3600.0]),
        ...                 acc, 1 - acc, label="mlp")
        >>> print(r.format_table())
        mlp: accuracy (%), mean +- std over 2 seeds
        g_max (uS)           t=1 h
             10.00   82.00 +- 2.83
             40.00   96.00 +- 1.41
    """

    g_max: np.ndarray
    seeds: np.ndarray
    t_inference: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    label: str = ""

    def rows(self) -> list[dict[str, Any]]:
        """One dict per grid point: label, g_max, seed, t_inference, accuracy, loss."""
        out = []
        for i, g in enumerate(self.g_max):
            for j, s in enumerate(self.seeds):
                for k, t in enumerate(self.t_inference):
                    out.append(
                        {
                            "label": self.label,
                            "g_max": float(g),
                            "seed": int(s),
                            "t_inference": float(t),
                            "accuracy": float(self.accuracy[i, j, k]),
                            "loss": float(self.loss[i, j, k]),
                        }
                    )
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Mean and standard deviation over seeds for every (g_max, t_inference)."""
        ddof = 1 if len(self.seeds) > 1 else 0
        acc_mean, acc_std = self.accuracy.mean(1), self.accuracy.std(1, ddof=ddof)
        loss_mean, loss_std = self.loss.mean(1), self.loss.std(1, ddof=ddof)
        out = []
        for i, g in enumerate(self.g_max):
            for k, t in enumerate(self.t_inference):
                out.append(
                    {
                        "label": self.label,
                        "g_max": float(g),
                        "t_inference": float(t),
                        "seeds": len(self.seeds),
                        "accuracy_mean": float(acc_mean[i, k]),
                        "accuracy_std": float(acc_std[i, k]),
                        "loss_mean": float(loss_mean[i, k]),
                        "loss_std": float(loss_std[i, k]),
                    }
                )
        return out

    def format_table(self) -> str:
        """A text table: one line per g_max, one column per inference time.

        Cells are accuracy in percent, mean +- standard deviation over seeds.
        """
        head = [f"{'g_max (uS)':>10}"] + [f"{'t=' + format_time(t):>15}" for t in self.t_inference]
        lines = [" ".join(head)]
        acc = 100 * self.accuracy
        ddof = 1 if len(self.seeds) > 1 else 0
        for i, g in enumerate(self.g_max):
            cells = [
                f"{acc[i, :, k].mean():7.2f} +-{acc[i, :, k].std(ddof=ddof):5.2f}"
                for k in range(len(self.t_inference))
            ]
            lines.append(" ".join([f"{g:>10.2f}"] + [f"{c:>15}" for c in cells]))
        title = f"{self.label}: " if self.label else ""
        caption = f"{title}accuracy (%), mean +- std over {len(self.seeds)} seeds"
        return caption + "\n" + "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`rows` as CSV, atomically (no partial file on failure)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.rows()[0]))
        writer.writeheader()
        writer.writerows(self.rows())
        _atomic_write(path, buf.getvalue())

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the grid, the per-point rows and the summary as JSON, atomically."""
        payload = {
            "label": self.label,
            "g_max": self.g_max.tolist(),
            "seeds": self.seeds.tolist(),
            "t_inference": self.t_inference.tolist(),
            "rows": self.rows(),
            "summary": self.summary(),
        }
        _atomic_write(path, json.dumps(payload, indent=1))


def _atomic_write(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


# --- validation ----------------------------------------------------------------------------


def _grid_axis(values: Any, name: str) -> np.ndarray:
    raw = np.asarray(values)
    if raw.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be numbers, got {values!r}.")
    arr = np.atleast_1d(raw.astype(np.float64))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-D sequence, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: the sweep grid needs at least one value.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf: {arr.tolist()}.")
    return arr


def _check_grid(
    g_max: Any, seeds: Any, t_inference: Any, where: str = "sweep"
) -> tuple[np.ndarray, ...]:
    g = _grid_axis(g_max, "g_max")
    _validation.check_g_max(g, where=where, name_values=True)
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        if not 1 <= seeds <= _validation.SEED_LIMIT:
            raise ValueError(
                f"seeds must be a positive count (at most 2**32) or a sequence of seeds, "
                f"got {seeds}."
            )
        s = np.arange(int(seeds))
    else:
        s = _validation.check_seeds(seeds)
    for value in np.asarray(t_inference, dtype=object).ravel():
        _validation.check_t_inference(value, where="sweep")
    t = _grid_axis(t_inference, "t_inference")
    return g, s.astype(np.int64), t


def _check_data(eval_data: Any) -> tuple[jax.Array, jax.Array]:
    if not isinstance(eval_data, Sequence) or len(eval_data) != 2:
        raise ValueError("eval_data must be a pair (inputs, integer labels).")
    x, y = np.asarray(eval_data[0]), np.asarray(eval_data[1])
    if y.ndim < 1 or y.dtype.kind not in "iu":
        raise ValueError(
            "eval_data labels must be an integer array [n] (or [n, ...], e.g. one label per "
            f"token), got shape {y.shape} dtype {y.dtype}."
        )
    if x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"eval_data inputs and labels disagree: {x.shape[0] if x.ndim else 0} inputs "
            f"but {y.shape[0]} labels."
        )
    if y.shape[0] == 0:
        raise ValueError("eval_data is empty.")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise ValueError("eval_data inputs contain NaN or Inf.")
    return _validation.to_jax(x), _validation.to_jax(y.astype(np.int32))


# --- the model -----------------------------------------------------------------------------


def _check_labels(
    y: jax.Array,
    apply_fn: ApplyFn,
    params: Any,
    x: jax.Array,
    stacked: bool,
    name: str = "eval_data labels",
) -> None:
    """Refuse labels that are not class indices of the model's logits (shapes only: no compile)."""

    def first_logits(params: Any, x: jax.Array) -> jax.Array:
        if stacked:  # one parameter set per seed: the first
            params = jax.tree.map(lambda leaf: leaf[0], params)
        return apply_fn(params, x[:1])

    logits = jax.eval_shape(first_logits, params, x)
    n_classes = int(logits.shape[-1]) if logits.ndim else 0
    labels = np.asarray(y)
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f"example {first[0]}" + (f", position {first[1:]}" if len(first) > 1 else "")
        raise ValueError(
            f"{name} must be class indices in [0, {n_classes}) (the model's logits "
            f"have {n_classes} classes); {int(bad.sum())} outside it, the first, "
            f"{int(labels[first])}, at {where}."
        )


@functools.cache
def _nnx_apply(graphdef: Any) -> ApplyFn:
    """A pure ``apply(state, x)`` for an NNX graph definition (cached: compile once)."""
    from flax import nnx

    def apply(state: Any, x: jax.Array) -> jax.Array:
        model = nnx.merge(graphdef, state)
        model.eval()
        return model(x)

    return apply


def _as_apply(model_or_apply_fn: Any, params: Any) -> tuple[ApplyFn, Any, Any, Any]:
    """``(apply_fn, params, kernel layouts read from a module or None, graphdef or None)``.

    For an ``nnx.Module`` the graph definition comes back too: each point
    programs the module itself (:func:`program_params` of the merged
    module), so that its layers' own tile sizes and masks apply, as they do
    when the module is programmed directly.
    """
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        nnx = None
    if nnx is not None and isinstance(model_or_apply_fn, nnx.Module):
        if params is not None:
            raise ValueError("pass params=None with an nnx.Module: its state is used.")
        layouts = kernel_layouts(model_or_apply_fn)
        graphdef, state = nnx.split(model_or_apply_fn)
        return _nnx_apply(graphdef), state, layouts, graphdef
    if not callable(model_or_apply_fn):
        raise TypeError(
            "model_or_apply_fn must be an nnx.Module or a function apply_fn(params, x) -> logits."
        )
    if params is None:
        raise ValueError("params is required with an apply function.")
    return model_or_apply_fn, params, getattr(model_or_apply_fn, "kernel_layouts", None), None


def _check_before_grid(
    params: Any,
    graphdef: Any,
    where: Any,
    layouts: Any,
    tile_sizes: tuple[tuple[str, int], ...],
    stacked: bool,
    seeds: np.ndarray,
) -> None:
    """Refuse parameters that cannot be evaluated on the chip, before the grid is compiled.

    Each grid point programs the kernels inside the compiled grid, where a
    traced check cannot report: NaN weights would surface as a NaN loss,
    and rows too small to program would come back as zeros. The kernels are
    checked here as :func:`program_params` checks them, on host copies (no
    compile), with errors naming the leaf (and, with ``stacked``, the
    parameter set and its seed); every other parameter (``nnx.Param`` of a
    module) is checked for NaN or Inf. Values that cannot be read on this
    process (global arrays spread over other processes' devices) are not
    checked here; with ``stacked``, the kernels of such parameters are not
    checked at all.
    """
    from flax import nnx

    layout_map = dict(layouts) if isinstance(layouts, tuple) else layouts

    def check(tree: Any, caller: str) -> None:
        target = tree if graphdef is None else nnx.merge(graphdef, tree)
        _check_kernels_only(target, caller, where=where, layouts=layout_map, **dict(tile_sizes))

    if not stacked:
        check(params, "sweep")
    else:
        leaves, treedef = jax.tree.flatten(params)
        # Keys are not checked and stay whole (they cannot be copied to the host).
        host = [
            leaf if _validation.is_typed_key(leaf) else _validation.concrete_value(leaf)
            for leaf in leaves
        ]
        if all(value is not None for value in host):
            for i, seed in enumerate(seeds.tolist()):
                one = [value if _validation.is_typed_key(value) else value[i] for value in host]
                check(jax.tree.unflatten(treedef, one), f"sweep (parameter set {i}, seed {seed})")
    if graphdef is not None:  # a module's state: its parameters (buffers may hold -inf)
        params = nnx.state(nnx.merge(graphdef, params), nnx.Param)
    _validation.check_leaves_finite(params, "sweep")


# --- the compiled evaluator ----------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _evaluator(
    apply_fn: ApplyFn,
    devices: tuple[Any, ...],
    n_batches: int,
    where: Any,
    strict_aihwkit: bool,
    layouts: Any = None,
    tile_sizes: tuple[tuple[str, int], ...] = (),
    stacked: bool = False,
    graphdef: Any = None,
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The jitted chunk evaluator (cached so that repeated sweeps compile once).

    With the ``graphdef`` of an NNX module, each point programs the module
    merged from it (its layers' tile sizes and masks), and evaluates its state.
    """
    from flax import nnx

    layout_map = dict(layouts) if isinstance(layouts, tuple) else layouts

    def one_point(params, xb, yb, mask, noise, g_max, seed, t, model):
        key = jax.random.key(seed)
        if stacked:  # one parameter set per seed: this point's model
            params = jax.tree.map(lambda leaf: leaf[model], params)
        programmed = program_params(
            params if graphdef is None else nnx.merge(graphdef, params),
            key,
            g_max=g_max,
            noise=noise,
            t_inference=t,
            strict_aihwkit=strict_aihwkit,
            where=where,
            layouts=layout_map,
            **dict(tile_sizes),
        )
        if graphdef is not None:
            programmed = nnx.state(programmed)

        def batch_metrics(carry, batch):
            # The programmed parameters travel in the carry rather than by closure:
            # NNX refuses variables from an outer trace inside its own transforms
            # (an nnx.scan over layers in the model).
            chip, correct, nll = carry
            xi, yi, mi = batch  # labels [batch, ...]: one per example, or per token
            logits = apply_fn(chip, xi)
            mi = mi.reshape(mi.shape + (1,) * (yi.ndim - 1))
            correct = correct + jnp.sum((jnp.argmax(logits, -1) == yi) * mi)
            nll = nll + jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, yi) * mi)
            return (chip, correct, nll), None

        zero = jnp.zeros((), jnp.float32)
        (_, correct, nll), _ = jax.lax.scan(batch_metrics, (programmed, zero, zero), (xb, yb, mask))
        n = jnp.sum(mask) * math.prod(yb.shape[2:])
        return correct / n, nll / n

    def chunk(params, xb, yb, mask, noise, g_max, seed, t, model):
        return jax.vmap(one_point, in_axes=(None, None, None, None, None, 0, 0, 0, 0))(
            params, xb, yb, mask, noise, g_max, seed, t, model
        )

    if len(devices) == 1:
        return jax.jit(chunk)
    grid, repl = _shardings(devices)
    # Replicated results: every process (of a multi-process run) reads them all.
    return jax.jit(
        chunk,
        in_shardings=(repl, repl, repl, repl, repl, grid, grid, grid, grid),
        out_shardings=(repl, repl),
    )


def _shardings(devices: tuple[Any, ...]) -> tuple[NamedSharding, NamedSharding]:
    """The grid-point sharding over ``devices`` and the replicated one."""
    mesh = Mesh(np.array(devices), (_AXIS,))
    return NamedSharding(mesh, PartitionSpec(_AXIS)), NamedSharding(mesh, PartitionSpec())


def _grid_array(values: np.ndarray, devices: tuple[Any, ...]) -> np.ndarray | jax.Array:
    """``values`` (the same on every process) as a global array sharded over the points.

    With one device the values are passed as they are. Otherwise each process
    places only the slices that its own devices hold, which is what a
    multi-process run needs: ``jax.jit`` refuses a NumPy array with a
    non-replicated sharding.
    """
    if len(devices) == 1:
        return values
    return _global_array(values, _shardings(devices)[0])


def _auto_chunk(params: Any, x: jax.Array, batch: int, n_points: int, budget: int) -> int:
    n_param = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    per_example = int(np.prod(x.shape[1:], dtype=np.int64)) if x.ndim > 1 else 1
    # Programmed copy, the conversion temporaries, and activations of one batch.
    per_point = 4 * (6 * n_param + 16 * batch * max(per_example, 64))
    return max(1, min(n_points, budget // max(per_point, 1)))


def sweep(
    model_or_apply_fn: Any,
    params: Any,
    eval_data: tuple[Float[ArrayLike, "n ..."], Int[ArrayLike, " n"]],
    *,
    g_max: Float[ArrayLike, " G"] = (10.0, 25.0, 40.0),
    seeds: int | Sequence[int] = 8,
    t_inference: Float[ArrayLike, " T"] = (1.0, 3600.0, 86400.0, 3.15e7),
    noise: NoiseModel | None = DEFAULT_NOISE,
    strict_aihwkit: bool = False,
    where: Callable[[tuple, Any], bool] | None = None,
    layouts: Layouts | None = None,
    max_input_size: int | None = None,
    max_output_size: int | None = None,
    stacked: bool = False,
    chunk_size: int | None = None,
    eval_batch_size: int | None = None,
    devices: Sequence[Any] | None = None,
    memory_budget_bytes: int = _DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
    label: str = "",
) -> SweepResult:
    """Evaluate a trained model programmed onto the simulated chip over a grid.

    For every point ``(g_max, seed, t_inference)`` of the grid, programs the
    model's kernels once with :func:`fusion_jax.program_params` (chip noise
    drawn with ``jax.random.key(seed)``: the same chip draw for a seed at
    every g_max and time, so differences between points are not sampling
    noise) and measures accuracy and mean cross-entropy on ``eval_data``.

    The grid is flattened and evaluated with ``jax.vmap`` inside one
    ``jax.jit``, in chunks of ``chunk_size`` points (the last chunk padded),
    so a sweep compiles once whatever the g_max, seed and time values. With
    several devices the points are sharded over a 1-D device ``Mesh``
    (``NamedSharding``); parameters and data are replicated.

    In a multi-process run (:func:`fusion_jax.distributed.initialize`: a TPU
    pod slice, a GPU cluster) every process calls ``sweep`` with the same
    arguments; the points are shared out over all processes' devices and
    every process gets the whole result, the same as one process would
    (same seeds, same chip draws). Parameters may also be global arrays on
    another mesh, as :func:`fusion_jax.distributed.shard_params` places them.
    Only process 0 shows the progress bar; writing files is left to the
    caller (on process 0: :func:`fusion_jax.distributed.is_main_process`).

    Args:
        model_or_apply_fn: An ``nnx.Module`` (programmed as
            :func:`program_params` programs the module: each Fusion layer's
            tile sizes, a masked convolution's kernel times its mask;
            evaluated in eval mode; pass ``params=None``; the sweep's
            ``noise``, ``strict_aihwkit``, g_max and times replace the
            layers' own settings) or a pure
            ``apply_fn(params, x) -> logits``, for example
            ``lambda p, x: linen_model.apply({"params": p}, x)``.
        params: The parameter pytree for ``apply_fn`` (``None`` for a module).
        eval_data: ``(inputs, labels)``, labels integer class indices, one
            per example ``[n]`` or several ``[n, ...]`` (for example one per
            token: accuracy and loss are then means over all labels).
        g_max: g_max values in uS, each in [10, 40].
        seeds: A count ``S`` (seeds ``0..S-1``) or a sequence of seeds.
        t_inference: Inference times in seconds after programming.
        noise: Noise model of the chip under test, for every kernel
            (default: the calibrated chip model, also for layers built with
            another or none); ``None`` programs without noise.
        strict_aihwkit: Reproduce the reference's zeroed degenerate rows.
        where: Leaf selector for :func:`program_params` (default: kernels).
        layouts: Kernel axes for :func:`program_params`, needed for kernels
            of rank above 2 (convolutions, stacked layers, attention) with an
            ``apply_fn``: for Linen, :func:`fusion_jax.linen.kernel_layouts`.
            Default: read from the ``nnx.Module`` (or ``apply_fn.kernel_layouts``).
        max_input_size: Most inputs per chip tile (aihwkit's mapping; 0: no
            split), as for :func:`fusion_jax.program_params`. Default: each
            Fusion layer's own, else 512.
        max_output_size: Most outputs per chip tile (0: no split). Default:
            each Fusion layer's own, else 512.
        stacked: ``params`` holds one parameter set per seed on a leading
            axis (for example models trained with different seeds, stacked
            with ``jax.tree.map(lambda *a: jnp.stack(a), *sets)``, or a
            module built by ``nnx.vmap``): seed ``seeds[i]`` programs and
            evaluates ``params[i]``.
        chunk_size: Grid points per compiled call; by default as many as fit
            ``memory_budget_bytes`` (rounded to a multiple of the devices).
        eval_batch_size: Evaluate the data in batches of this size (a
            ``lax.scan``) instead of all at once.
        devices: Devices to shard over (default: all of ``jax.devices()``,
            every process's in a multi-process run).
        memory_budget_bytes: Memory per chunk used to choose ``chunk_size``.
        progress: Show a progress bar over chunks.
        label: A name carried into the result's tables.

    Returns:
        A :class:`SweepResult` with accuracy and loss of shape ``[G, S, T]``.

    Raises:
        ArgumentError: if a g_max value is outside [10, 40].
        ValueError: for an empty grid, negative times or seeds, evaluation
            data whose inputs and labels disagree, labels that are not class
            indices of the model's logits, ``stacked`` parameters whose
            leading axis is not the number of seeds, kernels that
            :func:`program_params` refuses (NaN or Inf weights, rows too
            small to program; the leaf named) or other parameters holding
            NaN or Inf; all before compiling.
        FloatingPointError: if a grid point's loss is not finite (its noisy
            read-back overflowed), naming the point.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> w = jax.random.normal(jax.random.key(0), (4, 3))
        >>> apply_fn = lambda p, x: x @ p["kernel"]
        >>> x = jax.random.normal(jax.random.key(1), (32, 4))
        >>> y = jnp.argmax(x @ w, -1)
        >>> result = fj.sweep(apply_fn, {"kernel": w}, (x, y), g_max=[10.0, 40.0],
        ...                   seeds=2, t_inference=[1.0, 86400.0])
        >>> result.accuracy.shape
        (2, 2, 2)
    """
    g_values, seed_values, t_values = _check_grid(g_max, seeds, t_inference)
    for name, flag in (("strict_aihwkit", strict_aihwkit), ("stacked", stacked)):
        _validation.check_flag(flag, name, "sweep")
    x, y = _check_data(eval_data)
    apply_fn, params, found_layouts, graphdef = _as_apply(model_or_apply_fn, params)
    if stacked and graphdef is not None:
        # A module holding one model per seed (built by nnx.vmap): each point programs one
        # set, whose kernels lack the seed axis: the layouts of one set (shapes only).
        from flax import nnx

        one = jax.eval_shape(lambda s: jax.tree.map(lambda a: a[0] if a.ndim else a, s), params)
        found_layouts = kernel_layouts(nnx.merge(graphdef, one))
    frozen_layouts = freeze_layouts(found_layouts if layouts is None else layouts)
    if stacked:
        sizes = {
            int(np.shape(leaf)[0]) if np.ndim(leaf) else None for leaf in jax.tree.leaves(params)
        }
        if sizes != {seed_values.size}:
            raise ValueError(
                f"stacked=True needs every parameter with a leading axis of {seed_values.size} "
                f"(one set per seed), got leading sizes {sorted(sizes, key=str)}."
            )
    given_tiles = {"max_input_size": max_input_size, "max_output_size": max_output_size}
    tile_sizes = tuple(
        (name, tiles.check_max_size(value, name))
        for name, value in given_tiles.items()
        if value is not None
    )
    _check_labels(y, apply_fn, params, x, stacked)
    _check_before_grid(params, graphdef, where, frozen_layouts, tile_sizes, stacked, seed_values)
    model = resolve_noise(noise)
    devices = tuple(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty.")

    n = int(y.shape[0])
    batch = n if eval_batch_size is None else int(eval_batch_size)
    if batch < 1:
        raise ValueError(f"eval_batch_size must be positive, got {eval_batch_size}.")
    n_batches = math.ceil(n / batch)
    pad = n_batches * batch - n
    mask = jnp.concatenate([jnp.ones(n, jnp.float32), jnp.zeros(pad, jnp.float32)])
    xb = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    yb = jnp.concatenate([y, jnp.zeros((pad, *y.shape[1:]), y.dtype)])
    xb = xb.reshape(n_batches, batch, *x.shape[1:])
    yb, mask = yb.reshape(n_batches, batch, *y.shape[1:]), mask.reshape(n_batches, batch)

    grid_g, grid_s, grid_t = (
        a.ravel() for a in np.meshgrid(g_values, seed_values, t_values, indexing="ij")
    )
    grid_m = np.meshgrid(g_values, np.arange(seed_values.size), t_values, indexing="ij")[1].ravel()
    n_points = grid_g.size
    if chunk_size is None:
        chunk_size = _auto_chunk(params, x, batch, n_points, memory_budget_bytes)
    elif chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    chunk_size = min(int(chunk_size), n_points)
    chunk_size = len(devices) * math.ceil(chunk_size / len(devices))
    n_chunks = math.ceil(n_points / chunk_size)
    total = n_chunks * chunk_size

    def padded(a: np.ndarray, dtype: Any) -> np.ndarray:
        return np.concatenate([a, np.repeat(a[-1:], total - a.size)]).astype(dtype)

    dtype = _validation.compute_dtype(jnp.float32)
    pg, ps, pt = padded(grid_g, dtype), padded(grid_s, np.uint32), padded(grid_t, dtype)
    pm = padded(grid_m, np.int32)
    evaluate = _evaluator(
        apply_fn,
        devices,
        n_batches,
        where,
        bool(strict_aihwkit),
        frozen_layouts,
        tile_sizes,
        bool(stacked),
        graphdef,
    )

    replicated = (params, xb, yb, mask, model)
    if len(devices) > 1:
        # Global arrays on the grid mesh: NumPy or process-local values (the same on
        # every process), and parameters placed on another mesh (a training mesh).
        repl = _shardings(devices)[1]
        replicated = jax.tree.map(lambda leaf: _global_array(leaf, repl), replicated)
    chunks = range(n_chunks)
    if progress and jax.process_index() == 0:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"sweep {label}".strip(), unit="chunk", leave=False)
    acc, loss = [], []
    for c in chunks:
        sl = slice(c * chunk_size, (c + 1) * chunk_size)
        points = [_grid_array(v[sl], devices) for v in (pg, ps, pt, pm)]
        a, l_ = evaluate(*replicated, *points)
        acc.append(np.asarray(a))
        loss.append(np.asarray(l_))
    shape = (g_values.size, seed_values.size, t_values.size)
    accuracy = np.concatenate(acc)[:n_points].reshape(shape)
    losses = np.concatenate(loss)[:n_points].reshape(shape)
    if not np.all(np.isfinite(losses)):
        bad = np.argwhere(~np.isfinite(losses))[0]
        raise FloatingPointError(
            f"the sweep produced a non-finite loss at g_max={g_values[bad[0]]}, "
            f"seed={seed_values[bad[1]]}, t_inference={t_values[bad[2]]}."
        )
    return SweepResult(g_values, seed_values, t_values, accuracy, losses, label)
