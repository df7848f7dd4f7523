"""Electrostatic potential helpers: point selection (:mod:`mmlwf.esp.points`)."""

from .points import PointSettings, outside_mask, radii, select

__all__ = ["PointSettings", "outside_mask", "radii", "select"]
