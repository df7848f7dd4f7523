"""Counting XLA compilations.

JAX reports every backend (XLA) compilation as the monitoring event
``/jax/core/compile/backend_compile_duration``. One listener, registered on first use,
counts them for the whole process; :class:`CompileCounter` reads the count at its start and
reports the difference. The jitted step functions also report how many shapes they were
compiled for (their cache size), which is what "compiles once per batch shape" means.
"""

from __future__ import annotations

import threading

_EVENT = "/jax/core/compile/backend_compile_duration"
_lock = threading.Lock()
_count = 0
_registered = False


def _listener(event: str, duration_secs: float, **kwargs) -> None:
    global _count
    if event == _EVENT:
        with _lock:
            _count += 1


def compilations() -> int:
    """XLA compilations in this process since the listener was registered."""
    global _registered
    with _lock:
        if not _registered:
            from jax import monitoring

            monitoring.register_event_duration_secs_listener(_listener)
            _registered = True
        return _count


class CompileCounter:
    """XLA compilations since construction (``.count``)."""

    def __init__(self) -> None:
        self.start = compilations()

    @property
    def count(self) -> int:
        return compilations() - self.start


def cache_size(jitted: object) -> int | None:
    """Number of compiled variants (shapes) of a ``jax.jit`` function, when JAX tells."""
    try:
        return int(jitted._cache_size())
    except Exception:  # noqa: BLE001 (private API: absent in some versions)
        return None
