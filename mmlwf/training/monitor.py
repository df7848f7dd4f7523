"""Counting XLA compilations.

JAX reports every backend (XLA) compilation as the monitoring event
``/jax/core/compile/backend_compile_duration``. One listener, registered on first use,
counts them for the whole process; :class:`CompileCounter` reads the count at its start and
reports the difference. :class:`ShapeCountingJit` jits a step function and counts the
distinct argument shapes it was traced for, which is what "compiles once per batch shape" means
(counted by tracing, not read from JAX's dispatch cache, whose entries a long process may evict).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

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


class ShapeCountingJit:
    """A ``jax.jit`` function that records the shapes and dtypes of the arguments of every trace.

    Calls go straight to the jitted function; ``shapes`` is the number of distinct argument
    signatures traced so far (a retrace for the same shapes counts once)."""

    def __init__(self, fn: Callable, **jit_kwargs) -> None:
        import jax

        self._signatures: set = set()

        def traced(*args):
            leaves, tree = jax.tree.flatten(args)
            self._signatures.add((tree, tuple((tuple(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x))))
                                              for x in leaves)))
            return fn(*args)

        self._jitted = jax.jit(traced, **jit_kwargs)

    def __call__(self, *args):
        return self._jitted(*args)

    @property
    def shapes(self) -> int:
        return len(self._signatures)

