"""Runs across processes: two JAX processes on localhost, 2 CPU devices each.

The processes join with ``jax.distributed`` on a free loopback port chosen at
run time, exchange data through gloo, and are killed if they outlive their
time limit. What they compute (tests/distributed_worker.py) is compared with
the same computation in this process, on one device.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import distributed_worker as worker
import jax
import numpy as np
import pytest
from jax.sharding import AxisType

import fusion_jax as fj
from fusion_jax.cli import main

_TIMEOUT_S = 420  # for all processes of one run together; a stuck run fails, never hangs
_REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_processes(commands: list[list[str]], logs: Path) -> list[subprocess.CompletedProcess]:
    """Start every command at once (2 CPU devices each); wait for all, bounded in time.

    As soon as one process fails, or the time is up, every process still
    running is killed and the test fails with the output (kept in files
    under ``logs``, so that no pipe fills up and blocks a process).
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO), env.get("PYTHONPATH", "")])
    logs.mkdir(parents=True, exist_ok=True)
    files = [(logs / f"{i}.out", logs / f"{i}.err") for i in range(len(commands))]
    procs = []
    try:
        for cmd, (out, err) in zip(commands, files, strict=True):
            with out.open("w") as fo, err.open("w") as fe:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *cmd], env=env, cwd=_REPO, stdout=fo, stderr=fe
                    )
                )
        deadline = time.monotonic() + _TIMEOUT_S
        while None in [p.poll() for p in procs]:  # polls every process
            failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed:
                i = failed[0]
                pytest.fail(
                    f"{' '.join(commands[i])} exited {procs[i].returncode}:\n"
                    f"{files[i][1].read_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"processes still running after {_TIMEOUT_S} s: {commands}")
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    done = [
        subprocess.CompletedProcess(cmd, p.returncode, out.read_text(), err.read_text())
        for cmd, p, (out, err) in zip(commands, procs, files, strict=True)
    ]
    for run in done:
        assert run.returncode == 0, f"{' '.join(run.args)}:\n{run.stderr[-3000:]}"
    return done


def _process_flags(port: int, i: int) -> list[str]:
    return ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]


@pytest.fixture(scope="module")
def two_process_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[subprocess.CompletedProcess], list[dict], Path]:
    """One pair of processes for every two-process test (one start-up and join, one compile).

    Each process runs ``fusion-jax sweep`` (its output: the process's stdout;
    its files: the returned folder), then the worker's computation (returned
    per process).
    """
    folder = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    script = str(Path(worker.__file__))
    cli_out = folder / "results"
    runs = _run_processes(
        [
            [script, *_process_flags(port, i), "--out", str(folder / f"{i}.json")]
            + ["--cli-out", str(cli_out)]
            for i in range(2)
        ],
        folder / "logs",
    )
    return runs, [json.loads((folder / f"{i}.json").read_text()) for i in range(2)], cli_out


@pytest.fixture(scope="module")
def two_processes(two_process_run) -> list[dict]:
    """What each of the two processes computed."""
    return two_process_run[1]


@pytest.fixture(scope="module")
def one_device() -> dict:
    """The same computation in this process, on one device."""
    assert jax.process_count() == 1
    return worker.compute(None)


def test_every_process_sees_all_devices(two_processes):
    assert [r["process_index"] for r in two_processes] == [0, 1]
    assert [r["device_count"] for r in two_processes] == [4, 4]


@pytest.mark.parametrize("process", [0, 1])
def test_sweep_equals_single_process(two_processes, one_device, process):
    got = two_processes[process]
    shape = (len(worker.G_MAX), worker.SEEDS, len(worker.TIMES))
    assert np.shape(got["accuracy"]) == shape
    # Same seeds, same chip draws: the same correct counts, the loss up to summation order.
    np.testing.assert_array_equal(got["accuracy"], one_device["accuracy"])
    np.testing.assert_allclose(got["loss"], one_device["loss"], rtol=1e-6)
    # Parameters placed on the (data, model) training mesh first: the same sweep.
    np.testing.assert_array_equal(got["placed_accuracy"], one_device["accuracy"])
    np.testing.assert_allclose(got["placed_loss"], one_device["loss"], rtol=1e-6)


def test_programming_noise_does_not_depend_on_the_layout(two_processes, one_device):
    # Kernels split by output channel over the model axis, across both processes'
    # devices: every element draws the noise it draws on one device.
    for got in [*two_processes, one_device]:
        for a, b in zip(
            jax.tree.leaves(got["programmed"])
            + jax.tree.leaves(got["programmed_eagerly"])
            + jax.tree.leaves(got["programmed_across"]),
            jax.tree.leaves(one_device["programmed"]) * 3,
            strict=True,
        ):
            np.testing.assert_allclose(a, b, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("api", ["nnx", "linen"])
def test_training_steps_equal_single_process(two_processes, one_device, api):
    for got in two_processes:
        np.testing.assert_allclose(got[f"{api}_loss"], one_device[f"{api}_loss"], rtol=1e-6)
        leaves = jax.tree.leaves(got[f"{api}_params"])
        expected = jax.tree.leaves(one_device[f"{api}_params"])
        assert len(leaves) == len(expected) > 0
        for a, b in zip(leaves, expected, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    # The NNX model trained on the mesh, swept as a module.
    for got in two_processes:
        np.testing.assert_array_equal(got["nnx_sweep_accuracy"], one_device["nnx_sweep_accuracy"])
        np.testing.assert_allclose(got["nnx_sweep_loss"], one_device["nnx_sweep_loss"], rtol=1e-5)
    # The steps trained: the loss moved.
    assert one_device["nnx_loss"][0] != one_device["nnx_loss"][-1]
    # Only the first NNX step compiled: model and optimizer state placed with shard_params
    # (Explicit axes) are placed as fj.distributed.train_step returns them. Unplaced, the
    # optimizer's step counts, made on one device, come back on the mesh, and the second
    # step compiled again.
    for got in [*two_processes, one_device]:
        counts = got["nnx_compiles"]
        assert counts[0] >= 1 and counts == counts[:1] * len(counts), counts


def test_cli_sweep_two_processes(two_process_run):
    # worker.CLI_SWEEP: --seeds 2 --g-max 10 40, run by both processes.
    runs, _, out = two_process_run
    for i, run in enumerate(runs):
        assert f"process {i} of 2: 4 global device(s), 2 on this process (cpu)" in run.stdout
    # Process 0 prints the tables and writes the files; process 1 only says who it is.
    assert "hardware-aware: accuracy (%)" in runs[0].stdout
    assert "wrote sweep.csv" in runs[0].stdout
    assert "accuracy" not in runs[1].stdout and "wrote" not in runs[1].stdout
    rows = (out / "sweep.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2  # header, 2 models x 2 g_max x 2 seeds
    assert sorted(p.name for p in out.iterdir()) == [
        "sweep.csv",
        "sweep.json",
        "sweep.png",
        "table.txt",
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--coordinator", "127.0.0.1:1234"], "--num-processes, --process-id missing"),
        (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
        (
            ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
            "--process-id 2 must lie in [0, 2)",
        ),
        (["--distributed", "--process-id", "0"], "--distributed (JAX's own detection) takes no"),
    ],
)
def test_cli_multi_process_flags_are_checked(flags, message, capsys, tmp_path):
    assert main(["sweep", *flags, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_distributed_outside_a_cluster_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusion_jax",
            "sweep",
            "--distributed",
            "--out",
            str(tmp_path / "r"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "--distributed: JAX detected no multi-process run to join" in done.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_processes": 2}, "coordinator_address, process_id missing"),
        ({"coordinator_address": "h:0", "num_processes": 1, "process_id": 0}, "port in [1, 65535]"),
        ({"coordinator_address": "h:80", "num_processes": 0, "process_id": 0}, "at least 1"),
    ],
)
def test_initialize_checks_before_joining(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        fj.distributed.initialize(**kwargs)
    assert jax.process_count() == 1


def test_shard_params_splits_kernels_by_output_channel():
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    params = {"dense": {"kernel": np.ones((3, 4), np.float32), "bias": np.ones(4, np.float32)}}
    placed = fj.distributed.shard_params(params, mesh)
    assert placed["dense"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, "model")
    assert placed["dense"]["bias"].sharding.spec == jax.sharding.PartitionSpec()
    np.testing.assert_array_equal(placed["dense"]["kernel"], params["dense"]["kernel"])
    with pytest.raises(ValueError, match="model_axis 'tensor' is not an axis"):
        fj.distributed.shard_params(params, mesh, model_axis="tensor")
    with pytest.raises(ValueError, match="data_axis 'batch' is not an axis"):
        fj.distributed.shard_batch(np.zeros((2, 3)), mesh, data_axis="batch")


def test_kernels_sharded_in_their_type_program_as_on_one_device():
    # On a mesh of Explicit axes the sharding is part of the array's type; the
    # CPU fusion steering (materialize) must then leave such values as they are.
    mesh = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
    w = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    placed = fj.distributed.shard_params({"kernel": w}, mesh)["kernel"]
    assert "@model" in str(jax.typeof(placed))
    key = jax.random.key(1)
    on_mesh = jax.jit(lambda k: fj.program_kernel(k, key, g_max=20.0))(placed)
    # The same draw; float rounding may differ by an ulp where XLA fuses differently.
    np.testing.assert_allclose(on_mesh, fj.program_kernel(w, key, g_max=20.0), rtol=1e-6, atol=1e-7)
