"""The output folder of one MD run, the same for both engines (:class:`RunWriter`).

``OUTDIR`` holds ``trajectory.traj`` (ASE trajectory with energy and forces, every
``traj_every`` steps, the last step and the step a run stopped at), ``energy.csv`` (``step,
time_fs, Epot_eV, Ekin_eV, Etot_eV, T_K, min_distance_A`` and, for an ensemble,
``max_force_uncertainty_eV_per_A``, every ``log_every`` steps and the last one) and ``md.json``.
Written into a temporary folder beside ``OUTDIR``, renamed when complete.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..fileio import make_temp_dir
from .common import energy_drift
from .settings import MDSettings

COLUMNS = ["step", "time_fs", "Epot_eV", "Ekin_eV", "Etot_eV", "T_K", "min_distance_A"]
UNCERTAINTY_COLUMN = "max_force_uncertainty_eV_per_A"


class RunWriter:
    """Collects one run's rows and frames and writes ``OUTDIR`` (see the module docstring).

    ``uncertainty``: the model is an ensemble (energy.csv gets :data:`UNCERTAINTY_COLUMN`)."""

    def __init__(self, outdir: str | os.PathLike, settings: MDSettings, *, uncertainty: bool,
                 overwrite: bool = False) -> None:
        self.outdir, self.settings, self.uncertainty = Path(outdir), settings, uncertainty
        if self.outdir.exists() and not overwrite:
            raise FileExistsError(f"{self.outdir} exists (use --overwrite to replace it)")
        self.outdir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = make_temp_dir(f".{self.outdir.name}.", self.outdir.parent, suffix=".tmp")
        self._csv = open(self.tmp / "energy.csv", "w", newline="")
        self._writer = csv.writer(self._csv)
        self._writer.writerow(COLUMNS + ([UNCERTAINTY_COLUMN] if uncertainty else []))
        self._traj = None
        self.rows: list[tuple] = []
        self.frames: list[tuple[int, float]] = []  # (step, max force uncertainty or nan)
        self.closest = {"min_distance_A": float("inf"), "step": -1, "pair": [-1, -1]}

    def wants_row(self, step: int, last: int) -> bool:
        return step % self.settings.log_every == 0 or step == last

    def wants_frame(self, step: int, last: int) -> bool:
        return step % self.settings.traj_every == 0 or step == last

    def distance(self, step: int, d: float, i: int, j: int) -> None:
        """Record the closest pair of ``step`` (every step)."""
        if d < self.closest["min_distance_A"]:
            self.closest.update(min_distance_A=float(d), step=int(step), pair=sorted([int(i), int(j)]))

    def row(self, step: int, epot: float, ekin: float, T: float, d: float, u: float | None = None) -> None:
        """One energy.csv row (eV, K, Å, eV/Å)."""
        t = step * self.settings.dt_fs
        row = (step, t, epot, ekin, epot + ekin, T, d) + ((u,) if self.uncertainty else ())
        out = [step, f"{t:.6g}"] + [f"{v:.10f}" for v in row[2:5]] + [f"{T:.4f}", f"{d:.6f}"]
        self._writer.writerow(out + ([f"{u:.6g}"] if self.uncertainty else []))
        self.rows.append(row)

    def frame(self, atoms, step: int, u: float | None = None) -> None:
        """One trajectory frame: ``atoms`` with a calculator holding its energy and forces."""
        from ase.io.trajectory import Trajectory

        if self._traj is None:
            self._traj = Trajectory(self.tmp / "trajectory.traj", "w")
        self._traj.write(atoms)
        self.frames.append((int(step), float("nan") if u is None else float(u)))

    def _close(self) -> None:
        self._csv.close()
        if self._traj is not None:
            self._traj.close()

    def candidates(self) -> dict | None:
        """Trajectory frames whose largest force uncertainty lies in ``(lower, upper]``."""
        lo, hi = self.settings.uncertainty_lower_eV_per_A, self.settings.uncertainty_upper_eV_per_A
        if lo is None:
            return None
        hi = np.inf if hi is None else hi
        hits = [(k, s, u) for k, (s, u) in enumerate(self.frames) if lo < u <= hi]
        return {"lower_eV_per_A": lo, "upper_eV_per_A": self.settings.uncertainty_upper_eV_per_A,
                "frames": [k for k, _, _ in hits], "steps": [s for _, s, _ in hits],
                "max_force_uncertainty_eV_per_A": [u for _, _, u in hits]}

    def finish(self, *, n_atoms: int, formula: str, steps_done: int, wall_s: float, first_s: float,
               stopped: dict | None, extra: dict) -> dict:
        """Write md.json, move the folder into place and return md.json's content."""
        self._close()
        data = np.asarray(self.rows, np.float64)
        s = self.settings
        summary = {
            "settings": asdict(s),
            "n_atoms": n_atoms,
            "formula": formula,
            "steps_done": int(steps_done),
            "simulated_ps": steps_done * s.dt_fs / 1000.0,
            "first_evaluation_s": first_s,
            "md_wall_s": wall_s,
            "steps_per_s": steps_done / wall_s if wall_s > 0 else float("nan"),
            "closest_approach": self.closest,
            "mean_T_K": float(np.mean(data[1:, 5])) if len(data) > 1 else float(data[0, 5]),
            "stopped": stopped,
            **({"max_force_uncertainty_eV_per_A": float(np.nanmax(data[:, 7]))} if self.uncertainty else {}),
            **({"candidates": c} if (c := self.candidates()) is not None else {}),
            **({"nve": energy_drift(data[:, 1], data[:, 4], n_atoms)} if s.ensemble == "nve" and len(data) else {}),
            **extra,
        }
        (self.tmp / "md.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.outdir.exists():
            shutil.rmtree(self.outdir)
        os.replace(self.tmp, self.outdir)
        return summary

    def discard(self) -> None:
        """Remove the temporary folder (after an error)."""
        self._close()
        shutil.rmtree(self.tmp, ignore_errors=True)
