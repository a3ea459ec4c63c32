"""Exceptions raised by fusion_jax."""

from __future__ import annotations

__all__ = ["ArgumentError"]


class ArgumentError(ValueError):
    """An argument has a value the Fusion chip or the reference cannot accept.

    The counterpart of aihwkit's ``ArgumentError``; it subclasses
    :class:`ValueError` so that ``except ValueError`` catches it too.

    Example:
        >>> import fusion_jax as fj
        >>> try:
        ...     fj.convert_to_conductances([[1.0, 2.0]], g_max=50.0)
        ... except fj.ArgumentError as err:
        ...     print(err)
        Specified fusion g_max value must be between 10 and 40.
    """
