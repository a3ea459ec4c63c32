"""Runs across processes: TPU pod slices, GPU clusters, several processes on one machine.

A multi-host run is several JAX processes, one per host, joined by
:func:`jax.distributed.initialize`; each process sees every device of the
run (``jax.devices()``) but holds data only on its own
(``jax.local_devices()``). This module gives the few steps such a run needs
around :func:`fusion_jax.sweep` and hardware-aware training:

* :func:`initialize` joins the run (an explicit coordinator, or JAX's own
  detection on Cloud TPU and Slurm), with CPU collectives through gloo.
* :func:`shard_params` places a parameter pytree on a ``(data, model)``
  mesh, each kernel split over the model axis by output channel.
* :func:`shard_batch` makes one global batch, split over the data axis, of
  the rows each process holds.
* :func:`train_step` is one jitted hardware-aware NNX training step on such
  a mesh.

The programming noise of a kernel is a function of the key and of each
element's index in the whole kernel (a counter-based hash), so a kernel
split over devices draws the same noise as on one device: training on a
mesh matches one device up to float summation order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int

from fusion_jax.model_programming import LeafPath, _plain_path, is_kernel

__all__ = [
    "initialize",
    "is_main_process",
    "process_summary",
    "shard_batch",
    "shard_params",
    "train_step",
]

_ADDRESS_RE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\s]+):(?P<port>\d+)$")


def _check_address(address: str) -> None:
    match = _ADDRESS_RE.match(address)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(
            f"coordinator_address {address!r} must be HOST:PORT with a port in [1, 65535], "
            "for example 10.0.0.1:1234 (the address of process 0)."
        )


def _check_process_args(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
    """Check the arguments of :func:`initialize` without contacting anyone.

    Raises:
        ValueError: if only some of the three are given, the address is not
            ``HOST:PORT``, or a number is out of range (the message names it).
    """
    given = {
        "coordinator_address": coordinator_address,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    if all(v is None for v in given.values()):
        return
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise ValueError(
            f"{', '.join(missing)} missing: give coordinator_address, num_processes and "
            "process_id together, or none of them for JAX's own detection (Cloud TPU, Slurm)."
        )
    _check_address(str(coordinator_address))
    if int(num_processes) < 1:  # type: ignore[arg-type]
        raise ValueError(f"num_processes must be at least 1, got {num_processes}.")
    if not 0 <= int(process_id) < int(num_processes):  # type: ignore[arg-type]
        raise ValueError(
            f"process_id {process_id} must lie in [0, {num_processes}) "
            f"(num_processes {num_processes})."
        )


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 300,
) -> None:
    """Join a multi-process JAX run (:func:`jax.distributed.initialize`).

    Call it once in every process, before anything else touches JAX's
    devices. With no arguments JAX detects the run itself (Cloud TPU pod
    slices, Slurm, Open MPI, ...). Otherwise give all three: the address of
    process 0, the number of processes and this process's index. On CPUs
    the processes exchange data through gloo (the CPU collectives).

    Args:
        coordinator_address: ``HOST:PORT`` of process 0, reachable from all.
        num_processes: How many processes take part, at least 1.
        process_id: This process's index, in ``[0, num_processes)``.
        initialization_timeout: Seconds to wait for all processes to join.

    Raises:
        ValueError: if only some of the three are given, or one is out of
            range, before contacting anyone; or, with none given, if JAX
            detects no run to join.

    Example:
        >>> import fusion_jax as fj
        >>> fj.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=2)
        Traceback (most recent call last):
        ...
        ValueError: process_id 2 must lie in [0, 2) (num_processes 2).
    """
    _check_process_args(coordinator_address, num_processes, process_id)
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address,
            None if num_processes is None else int(num_processes),
            None if process_id is None else int(process_id),
            initialization_timeout=int(initialization_timeout),
        )
    except ValueError as err:
        if coordinator_address is not None:
            raise
        raise ValueError(
            f"JAX detected no multi-process run to join (Cloud TPU pod slice, Slurm, Open MPI): "
            f"{err} Give coordinator_address, num_processes and process_id instead."
        ) from err


def is_main_process() -> bool:
    """Whether this is process 0, the one that prints and writes files.

    Example:
        >>> import fusion_jax as fj
        >>> fj.distributed.is_main_process()      # a single-process run
        True
    """
    return jax.process_index() == 0


def process_summary() -> str:
    """One line: which process this is and the devices it sees.

    Example:
        >>> import fusion_jax as fj
        >>> fj.distributed.process_summary()      # doctest: +ELLIPSIS
        'process 0 of 1: ... global device(s), ... on this process (cpu)'
    """
    return (
        f"process {jax.process_index()} of {jax.process_count()}: {jax.device_count()} global "
        f"device(s), {jax.local_device_count()} on this process ({jax.default_backend()})"
    )


def _global_array(leaf: Any, sharding: NamedSharding) -> Any:
    """``leaf`` (the same on every process) as a global array with ``sharding``.

    A global array (of another mesh or layout) is resharded; with one process
    any array is simply moved. In a multi-process run a process-local array
    or NumPy array becomes the pieces this process's devices hold.
    """
    if not isinstance(leaf, jax.Array | np.ndarray | np.generic):
        return leaf  # Python numbers and None stay as they are (static, or replicated by jit)
    if isinstance(leaf, jax.Array):
        if leaf.sharding == sharding:
            return leaf
        if jax.process_count() == 1 or not leaf.is_fully_addressable:
            return jax.device_put(leaf, sharding)
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = _global_array(jax.random.key_data(leaf), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    values = np.asarray(leaf)
    return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])


def shard_params(
    params: Any,
    mesh: Mesh,
    *,
    model_axis: str | None = "model",
    where: Callable[[LeafPath, Any], bool] | None = None,
) -> Any:
    """Place a parameter pytree on ``mesh``: kernels split by output channel.

    Every kernel (selected as by :func:`fusion_jax.program_params`) is split
    over ``model_axis`` along its last axis, an output axis of Flax's
    ``Dense``/``Linear``/``Conv`` kernels: each device then programs whole
    rows of the chip (the per-row scale and regression stay on one device)
    and draws exactly the noise one device would. A kernel whose last axis
    the mesh axis does not divide, and every other leaf (biases, RNG state,
    step counts), is replicated. Every process must pass the same
    values (for example, built from the same seed); each places only the
    pieces its devices hold.

    Place an optimizer's state too (``nnx.state(optimizer)``, or optax's
    ``opt_state``): its moments of a kernel (paths ending in ``kernel``) are
    then split as the kernel, and its step counts, made on one device, are
    put on the mesh, where a jitted step returns them; on a mesh of
    ``Explicit`` axes (the default of ``jax.make_mesh``) the second step then
    does not compile again. (On ``Auto`` axes XLA may return leaves placed
    otherwise: give the step ``out_shardings``.)

    Splitting a kernel's input axis instead (your own ``NamedSharding``)
    works on a mesh of ``Auto`` axes (a row's sums then span devices: equal
    to one device up to float summation order); with ``Explicit`` axes (the
    default of ``jax.make_mesh``) split kernels by output only.

    Works on an ``nnx.State`` (``nnx.state(model)``, apply it back with
    ``nnx.update``), Linen ``variables``, or any pytree of arrays.

    Args:
        params: The pytree.
        mesh: The device mesh (all processes' devices).
        model_axis: The mesh axis to split kernels over; ``None`` replicates all.
        where: Leaf selector ``where(path, leaf)`` (default
            :func:`fusion_jax.is_kernel`).

    Returns:
        The pytree with every array leaf a global ``jax.Array`` on ``mesh``.

    Raises:
        ValueError: if ``model_axis`` is not an axis of ``mesh``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import fusion_jax as fj
        >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
        >>> p = fj.distributed.shard_params({"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}, mesh)
        >>> tuple(p["kernel"].sharding.spec), tuple(p["bias"].sharding.spec)
        ((None, 'model'), ())
    """
    if model_axis is not None and model_axis not in mesh.axis_names:
        raise ValueError(f"model_axis {model_axis!r} is not an axis of the mesh {mesh.axis_names}.")
    select = is_kernel if where is None else where
    n_model = 1 if model_axis is None else mesh.shape[model_axis]

    def place(keypath: tuple[Any, ...], leaf: Any) -> Any:
        ndim = np.ndim(leaf) if hasattr(leaf, "shape") else 0
        split = (
            model_axis is not None
            and ndim >= 2
            and select(_plain_path(keypath), leaf)
            and leaf.shape[-1] % n_model == 0
        )
        spec = PartitionSpec(*([None] * (ndim - 1)), model_axis) if split else PartitionSpec()
        return _global_array(leaf, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(place, params)


def shard_batch(batch: Any, mesh: Mesh, *, data_axis: str = "data") -> Any:
    """One global batch from the rows each process holds, split over ``data_axis``.

    The global batch is the processes' local batches one after the other,
    in process order (:func:`jax.make_array_from_process_local_data`). With
    one process it is the batch itself, placed on the mesh.

    Args:
        batch: An array or pytree of arrays, this process's rows first.
        mesh: The device mesh.
        data_axis: The mesh axis the rows are split over.

    Returns:
        The same structure of global arrays, leading axis split over ``data_axis``.

    Raises:
        ValueError: if ``data_axis`` is not an axis of ``mesh``.

    Example:
        >>> import jax, numpy as np
        >>> import fusion_jax as fj
        >>> mesh = jax.make_mesh((1, 1), ("data", "model"))
        >>> x = fj.distributed.shard_batch(np.zeros((8, 3), np.float32), mesh)
        >>> x.shape, tuple(x.sharding.spec)
        ((8, 3), ('data',))
    """
    if data_axis not in mesh.axis_names:
        raise ValueError(f"data_axis {data_axis!r} is not an axis of the mesh {mesh.axis_names}.")
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), batch
    )


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    # One-hot rather than a gather: the logits may be split over the classes.
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * one_hot, axis=-1))


@nnx.jit
def train_step(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    x: Float[Array, "batch ..."],
    y: Int[Array, " batch"],
) -> Float[Array, ""]:
    """One hardware-aware training step, on one device or a multi-process mesh.

    The model's Fusion layers (in training mode) program their kernels with
    a fresh draw of the noise, the mean cross-entropy is differentiated
    through the programming, and ``optimizer`` updates the model in place.
    Under ``jax.jit`` the shardings come from the arrays: put the model and
    the optimizer's state on the mesh with :func:`shard_params` and the
    batch with :func:`shard_batch`, and every process runs this same step on
    its part (on a mesh of ``Explicit`` axes, compiled once: the step returns
    its state placed as it came).

    Args:
        model: An NNX classifier in training mode (``model.train()``).
        optimizer: ``nnx.Optimizer(model, tx, wrt=nnx.Param)``.
        x: The (global) batch of inputs.
        y: Integer labels.

    Returns:
        The batch's mean cross-entropy before the update.

    Example:
        >>> import jax, jax.numpy as jnp, optax
        >>> from flax import nnx
        >>> import fusion_jax as fj
        >>> model = nnx.Sequential(fj.nnx.FusionLinear(4, 3, rngs=nnx.Rngs(0, noise=1)))
        >>> model.train()
        >>> optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
        >>> x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
        >>> loss = fj.distributed.train_step(model, optimizer, x, y)
        >>> bool(fj.distributed.train_step(model, optimizer, x, y) < loss)
        True
    """

    def loss_fn(model: nnx.Module) -> jax.Array:
        return _cross_entropy(model(x), y)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss
