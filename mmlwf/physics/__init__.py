"""Physical terms added to the learned energy (jax): PhysNet's Coulomb (:mod:`.coulomb`), the
short-range ZBL repulsion (:mod:`.zbl`) and Grimme's D3(BJ) dispersion (:mod:`.d3`).

``mmlwf.physics.D3Calculator`` (an ASE calculator) is imported on first use.
"""

from __future__ import annotations

__all__ = ["D3Calculator"]


def __getattr__(name: str):
    if name == "D3Calculator":
        from .d3_calculator import D3Calculator

        return D3Calculator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
