#!/usr/bin/env bash
# The Flax layers against the lowest versions pyproject.toml admits (flax 0.12.6 with
# jax 0.9.0): a separate virtual environment, then the layer, programming and transformer
# tests (the transformer trains through a programming inside lax.cond).
# flax 0.12.0 to 0.12.5 fail them (NNX variables, traced g_max under vmap), hence the bound.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-/tmp/fusion_jax_lowest}
python3 -m venv "$venv"
"$venv/bin/pip" install -q -e ".[test]" "flax==0.12.6" "jax==0.9.0" "jaxlib==0.9.0"
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_nnx.py tests/test_linen.py tests/test_programming.py tests/test_kernel_axes.py \
    tests/test_flax_features.py tests/test_transformer.py fusion_jax/transformer.py
