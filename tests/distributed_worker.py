"""One process of the two-process tests (tests/test_distributed.py), and their reference.

Run as a script it joins a run on localhost (``--coordinator``,
``--num-processes``, ``--process-id``). With ``--cli-out`` it joins through
the command line's ``fusion-jax sweep`` (:data:`CLI_SWEEP`, written to that
folder; its output is this process's stdout), so that one pair of processes
checks both. Then it computes a small sweep, programs a
Linen model's parameters and takes a few NNX and Linen training steps on a
``(data, model)`` mesh of all processes' devices, and writes what it got as
JSON to ``--out``. Imported, :func:`compute` with ``mesh=None`` computes the
same on one device: the reference the test compares with.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any

import numpy as np
from compile_count import counting_compiles

G_MAX = (10.0, 25.0, 40.0)
SEEDS = 2
TIMES = (1.0, 86400.0)
STEPS = 3
BATCH = 16  # global batch of the training steps
# ``fusion-jax sweep`` run first with --cli-out: a small hardware-aware experiment.
CLI_SWEEP = ["--epochs", "1", "--hidden", "4", "--seeds", "2", "--g-max", "10", "40"]
CLI_SWEEP += ["--times", "1s", "--noise", "none", "--gradient", "ste", "--no-progress"]


def problem() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A fixed two-layer network and data it classifies (NumPy: the same in every process)."""
    rng = np.random.default_rng(0)
    params = {
        "hidden": {"kernel": rng.normal(size=(8, 8)).astype(np.float32)},
        "out": {"kernel": rng.normal(size=(8, 4)).astype(np.float32)},
    }
    x = rng.normal(size=(24, 8)).astype(np.float32)
    y = np.argmax(np.maximum(x @ params["hidden"]["kernel"], 0) @ params["out"]["kernel"], -1)
    return params, x, y.astype(np.int32)


def apply_fn(params: Any, x: Any) -> Any:
    import jax

    hidden = jax.nn.relu(x @ params["hidden"]["kernel"])
    return hidden @ params["out"]["kernel"]


def _gather(tree: Any) -> Any:
    """Every leaf as a whole NumPy array on every process."""
    import jax
    from jax.experimental import multihost_utils

    def whole(a: Any) -> list:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            a = multihost_utils.process_allgather(a, tiled=True)
        return np.asarray(a).tolist()

    return jax.tree.map(whole, tree)


def _linen_model() -> Any:
    import flax.linen as nn

    import fusion_jax as fj

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            # Straight-through gradient: compiles faster; the noise draw is the same.
            settings = {"g_max": 20.0, "t_inference": 3600.0, "gradient": "ste"}
            x = nn.relu(fj.linen.FusionDense(8, **settings)(x))
            return fj.linen.FusionDense(4, **settings)(x)

    return Net()


def compute(mesh: Any) -> dict[str, Any]:
    """The sweep, programmed Linen parameters and NNX/Linen training losses and weights."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from jax.sharding import AxisType, Mesh

    import fusion_jax as fj
    from fusion_jax.digits import MLP
    from fusion_jax.distributed import _cross_entropy, shard_batch, shard_params, train_step

    params, x, y = problem()
    out: dict[str, Any] = {}
    result = fj.sweep(
        apply_fn, params, (x, y), g_max=G_MAX, seeds=SEEDS, t_inference=TIMES, chunk_size=4
    )
    out["accuracy"], out["loss"] = result.accuracy.tolist(), result.loss.tolist()

    def place(tree: Any) -> Any:
        return tree if mesh is None else shard_params(tree, mesh)

    # Parameters already on the training mesh (kernels split over "model") sweep alike.
    result = fj.sweep(
        apply_fn, place(params), (x, y), g_max=G_MAX, seeds=SEEDS, t_inference=TIMES, chunk_size=4
    )
    out["placed_accuracy"], out["placed_loss"] = result.accuracy.tolist(), result.loss.tolist()

    # The local rows of the global batch: this process's slice, in process order.
    n_local = BATCH // jax.process_count()
    rows = slice(jax.process_index() * n_local, (jax.process_index() + 1) * n_local)

    def batch(xb: np.ndarray, yb: np.ndarray) -> tuple[Any, Any]:
        if mesh is None:
            return jnp.asarray(xb), jnp.asarray(yb)
        return shard_batch((xb[rows], yb[rows]), mesh)

    # Linen parameters programmed once (program_params), kernels split over "model".
    linen = _linen_model()
    variables = linen.init(jax.random.key(0), x[:1])
    program = jax.jit(lambda v: fj.program_params(v, jax.random.key(7), g_max=15.0))
    out["programmed"] = _gather(program(place(variables)))
    # Eagerly too, on the same mesh (each process holds whole kernels) and on a mesh whose
    # "model" axis spans both processes: there the host checks cannot read every value.
    eager = fj.program_params(place(variables), jax.random.key(7), g_max=15.0)
    out["programmed_eagerly"] = _gather(eager)
    if mesh is not None:
        across = jax.make_mesh(
            (1, jax.device_count()), ("data", "model"), axis_types=(AxisType.Explicit,) * 2
        )
        split = shard_params(variables, across)
        assert not split["params"]["Dense_0"]["kernel"].is_fully_addressable
        eager = fj.program_params(split, jax.random.key(7), g_max=15.0)
    out["programmed_across"] = _gather(eager)

    # NNX hardware-aware training steps with the library's train_step.
    fusion = {"g_max": 20.0, "t_inference": 3600.0}  # the exact gradient, on split kernels
    model = MLP(8, (8,), 4, fusion=fusion, rngs=nnx.Rngs(params=0, noise=1))
    model.train()
    nnx.update(model, place(nnx.state(model)))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    nnx.update(optimizer, place(nnx.state(optimizer)))  # its step counts too
    # fj.distributed.train_step fed its own outputs must not compile again: the model and
    # optimizer state placed by shard_params are placed as the step returns them.
    losses, counts = [], []
    with counting_compiles() as compiles:
        for step in range(STEPS):
            xb, yb = batch(x[step : step + BATCH], y[step : step + BATCH])
            losses.append(float(train_step(model, optimizer, xb, yb)))
            counts.append(compiles())
    out["nnx_loss"], out["nnx_compiles"] = losses, counts  # compiles so far, after each step
    out["nnx_params"] = _gather(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    # The trained model, still on the mesh, swept as a module.
    result = fj.sweep(model, None, (x, y), g_max=(10.0, 40.0), seeds=1, t_inference=(3600.0,))
    out["nnx_sweep_accuracy"], out["nnx_sweep_loss"] = (
        result.accuracy.tolist(),
        result.loss.tolist(),
    )

    # The Linen steps on a mesh of Auto axes (the NNX ones: the mesh given, Explicit axes).
    if mesh is not None:
        mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * 2)
    variables = place(variables)

    # Linen hardware-aware training steps: the noise key is an argument of the step.
    tx = optax.adam(1e-2)
    opt_state = place(tx.init(variables["params"]))

    # Outputs placed as the inputs: on Auto axes XLA would otherwise split the biases
    # over "model", and the second step would compile again.
    placement = jax.tree.map(lambda a: a.sharding, (variables["params"], opt_state))

    @functools.partial(jax.jit, out_shardings=(*placement, None))
    def linen_step(p: Any, opt_state: Any, key: Any, xb: Any, yb: Any) -> tuple[Any, Any, Any]:
        def loss_fn(p: Any) -> Any:
            return _cross_entropy(linen.apply({"params": p}, xb, rngs={"noise": key}), yb)

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    p, losses = variables["params"], []
    for step in range(STEPS):
        xb, yb = batch(x[step : step + BATCH], y[step : step + BATCH])
        p, opt_state, loss = linen_step(p, opt_state, jax.random.key(100 + step), xb, yb)
        losses.append(float(loss))
    out["linen_loss"], out["linen_params"] = losses, _gather(p)
    return out


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument("--process-id", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cli-out", help="run `fusion-jax sweep` first, writing here")
    args = parser.parse_args(argv)

    import jax
    from jax.sharding import AxisType

    import fusion_jax as fj
    from fusion_jax.cli import main as cli_main

    if args.cli_out is None:
        fj.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    else:  # the command joins the run itself
        joined = ["--coordinator", args.coordinator, "--num-processes", str(args.num_processes)]
        joined += ["--process-id", str(args.process_id), "--out", args.cli_out]
        status = cli_main(["sweep", *CLI_SWEEP, *joined])
        sys.stdout.flush()
        if status != 0:
            raise SystemExit(f"fusion-jax sweep exited {status}")
    shape = (args.num_processes, jax.device_count() // args.num_processes)
    mesh = jax.make_mesh(shape, ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    out = compute(mesh)
    out["process_index"], out["device_count"] = jax.process_index(), jax.device_count()
    with open(args.out, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
