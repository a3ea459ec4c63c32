"""``python -m fusion_jax``: the ``fusion-jax`` command (see :mod:`fusion_jax.cli`)."""

from fusion_jax.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
