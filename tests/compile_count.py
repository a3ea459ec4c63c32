"""Counting XLA compilations, for tests that promise a program compiles once."""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax


@contextlib.contextmanager
def counting_compiles() -> Iterator[Callable[[], int]]:
    """Count XLA compilations in the block; the yielded function says how many so far."""
    events: list[str] = []

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield lambda: len(events)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
