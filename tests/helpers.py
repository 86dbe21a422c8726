"""Test helpers shared by several test files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles() -> Iterator[list[float]]:
    """Collect one entry per XLA backend compilation (any jitted or eager program) while the block runs.

    ``with count_compiles() as compiles: ...`` then ``len(compiles)``. Counts compilations, not time: a program
    already in JAX's in-memory cache costs none.
    """
    events: list[float] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == _COMPILE_EVENT:
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
