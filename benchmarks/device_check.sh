#!/usr/bin/env bash
# The accelerator figures of README's speed section, in one run that fits a device lease.
#
# On a machine with a GPU (or TPU), from the repository root, with JAX, Flax, optax,
# jaxtyping and scikit-learn installed (the package itself need not be: PYTHONPATH):
#
#     OUT=results bash benchmarks/device_check.sh          # about 5 minutes on one GPU
#     QUICK=1 OUT=/tmp/dc bash benchmarks/device_check.sh  # a short dry run, on any machine
#
# It writes to $OUT (8 files): train_step_B.json (the hardware-aware training step
# against nnx.Linear at batch B, with the breakdown), grad_memory.json (time of the
# exact gradient over the forward programming and XLA's temporaries, at three sizes),
# roundtrip.md and .json (program and round trip against one elementwise pass),
# compile_time.json, and log.txt (all output, the devices first). Each benchmark has
# its own time limit, so one that hangs or runs long costs its own figures only.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:?set OUT to the folder for the results}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
platform=$("$py" -c "import jax; print(jax.default_backend())")

if [[ -n "${QUICK:-}" ]]; then
    batches=(256) sizes=(256 512) repeats=5 shapes=(256x512)
else
    batches=(256 1024 4096) sizes=(2048 4096 8192) repeats=100 shapes=()
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, never stop the script
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout "$limit" "$@"
    echo "== $name: exit $?, $((SECONDS - start)) s"
}

{
    step devices 60 "$py" -c "import jax; print(jax.__version__, jax.devices())"
    for batch in "${batches[@]}"; do
        step "train_step batch $batch" 120 "$py" benchmarks/train_step.py --prng threefry \
            --batch "$batch" --repeats "$repeats" --breakdown --json "$out/train_step_$batch.json"
    done
    step grad_memory 150 "$py" benchmarks/grad_memory.py --sizes "${sizes[@]}" \
        --repeats 3 --json "$out/grad_memory.json"
    step roundtrip 90 "$py" benchmarks/roundtrip.py --platform "$platform" \
        ${shapes[@]:+--shapes "${shapes[@]}"} --repeats "$repeats" \
        --json "$out/roundtrip.json" --markdown "$out/roundtrip.md"
    step compile_time 120 "$py" benchmarks/compile_time.py --json "$out/compile_time.json"
} 2>&1 | tee "$out/log.txt"
