"""The stop checks of both MD engines (:mod:`mmlwf.md.stops`), the ASE engine's stops with a cheap
test-double calculator (no model), and the one-line error of a missing ``md`` extra (these run
without jax-md; tests/test_md_jax.py needs it)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes

from mmlwf.md import MDSettings, run_md, stops


def test_bonds_of_the_start_structure():
    from ase.build import molecule

    water = molecule("H2O")
    i, j, r0 = stops.bond_list(water.numbers, water.positions)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2)]
    np.testing.assert_allclose(r0, water.get_distance(0, 1), rtol=1e-12)


def test_check_reports_the_first_condition_that_holds_in_numpy_and_jax():
    import jax.numpy as jnp

    R = np.array([[0.0, 0, 0], [0.4, 0, 0], [3.0, 0, 0]])
    bonds = (np.array([0]), np.array([2]), np.array([1.0]))
    i, j = np.array([0, 1, 0, 2]), np.array([1, 0, 2, 0])
    for xp in (np, jnp):
        Rx = xp.asarray(R)
        closest = stops.closest_pair(Rx, xp.asarray(i), xp.asarray(j), xp.asarray([True, True, True, False]), xp)
        bond = stops.stretched_bond(Rx, tuple(xp.asarray(b) for b in bonds), xp)
        u = xp.asarray([0.1, 2.0, 0.3])
        lim = stops.limits(MDSettings(steps=1, min_distance_A=0.5, bond_factor=2.0, uncertainty_upper_eV_per_A=1.0))
        code, value, a, b = stops.check(1.0, closest, bond, u, xp.asarray(lim), xp)
        assert (int(code), float(value), int(a), int(b)) == (2, pytest.approx(0.4), 0, 1)  # too close first
        lim2 = stops.limits(MDSettings(steps=1, min_distance_A=0.1, bond_factor=2.0, uncertainty_upper_eV_per_A=1.0))
        code, value, a, b = stops.check(1.0, closest, bond, u, xp.asarray(lim2), xp)
        assert (int(code), float(value), int(a), int(b)) == (3, pytest.approx(3.0), 0, 2)  # then the bond
        lim3 = stops.limits(MDSettings(steps=1, min_distance_A=0.1, uncertainty_upper_eV_per_A=1.0))
        code, value, a, _ = stops.check(1.0, closest, bond, u, xp.asarray(lim3), xp)
        assert (int(code), float(value), int(a)) == (4, pytest.approx(2.0), 1)
        code, *_ = stops.check(float("nan"), closest, bond, u, xp.asarray(lim3), xp)
        assert int(code) == 1
        code, *_ = stops.check(1.0, closest, bond, None, xp.asarray(stops.limits(MDSettings(steps=1, min_distance_A=0))), xp)
        assert int(code) == 0
    record = stops.stop_record(3, 12, 0.5, 3.0, 0, 2)
    assert record == {"reason": "bond_broken", "step": 12, "time_fs": 6.0, "value": 3.0, "unit": "ratio", "atoms": [0, 2]}
    assert stops.describe(record) == "the bond 0-2 stretched to 3.00 times its start length at step 12 (t = 6 fs)"


class Pull(Calculator):
    """Harmonic bonds to the start positions, and a constant force pulling atom 0 away along x (eV/Å)."""

    implemented_properties = ("energy", "forces")

    def __init__(self, start, pull=4.0):
        super().__init__()
        self.start, self.pull = start.positions.copy(), pull

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions - self.start
        f = -5.0 * d
        f[0, 0] += self.pull
        self.results = {"energy": float(2.5 * np.sum(d * d) - self.pull * d[0, 0]), "forces": f}


def test_the_ase_engine_stops_at_the_step_a_bond_breaks(tmp_path):
    from ase.build import molecule

    start = molecule("H2O")
    i, j, r0 = stops.bond_list(start.numbers, start.positions)
    base = {"steps": 400, "dt_fs": 0.5, "temperature_K": 0.0, "traj_every": 1, "min_distance_A": 0.0}
    free = run_md(Pull(start), start, MDSettings(**base), tmp_path / "free")
    import ase.io

    ratios = [np.max(np.linalg.norm(f.positions[i] - f.positions[j], axis=1) / r0)
              for f in ase.io.read(tmp_path / "free" / "trajectory.traj", ":")]
    step = int(np.argmax(np.array(ratios) > 1.3))
    assert free["stopped"] is None and 0 < step < 400
    run = run_md(Pull(start), start, MDSettings(**base, bond_factor=1.3), tmp_path / "stop")
    assert run["stopped"]["reason"] == "bond_broken" and run["stopped"]["step"] == step == run["steps_done"]
    assert run["stopped"]["value"] == pytest.approx(ratios[step]) and run["stopped"]["atoms"][0] == 0
    assert json.loads((tmp_path / "stop" / "md.json").read_text())["stopped"] == run["stopped"]
    assert "max_force_uncertainty_eV_per_A" not in (tmp_path / "stop" / "energy.csv").read_text()


class BlowsUp(Pull):
    """:class:`Pull` that refuses a non-finite energy (as MMLWFCalculator does) from call ``at`` on."""

    def __init__(self, start, at: int) -> None:
        super().__init__(start)
        self.calls, self.at = 0, at

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        self.calls += 1
        if self.calls > self.at:
            from mmlwf.errors import DataError

            raise DataError("the model's energy is not finite (nan)", field="energy")
        super().calculate(atoms, properties, system_changes)


def test_the_ase_engine_stops_where_the_calculator_refuses_a_non_finite_energy(tmp_path):
    from ase.build import molecule

    start = molecule("H2O")
    base = {"steps": 50, "dt_fs": 0.5, "temperature_K": 0.0, "traj_every": 1, "min_distance_A": 0.0}
    run = run_md(BlowsUp(start, at=21), start, MDSettings(**base), tmp_path / "nan")  # call 1: step 0
    assert run["stopped"]["reason"] == "non_finite_energy" and run["stopped"]["step"] == 21 == run["steps_done"]
    assert run["stopped"]["value"] is None
    assert json.loads((tmp_path / "nan" / "md.json").read_text())["stopped"] == run["stopped"]
    with pytest.raises(Exception, match="not finite"):  # any other data error is not a stop
        from mmlwf.errors import DataError

        class Bad(Pull):
            def calculate(self, *args, **kwargs):
                raise DataError("the model's energy is not finite", field="R")

        run_md(Bad(start), start, MDSettings(**base), tmp_path / "bad")


def test_missing_jax_md_is_a_one_line_error_naming_the_extra(monkeypatch, tmp_path, capsys):
    import sys

    from mmlwf.cli import main
    from mmlwf.errors import ConfigError
    from mmlwf.md import run_md_jax

    monkeypatch.setitem(sys.modules, "jax_md", None)
    start = molecule_h2o()
    with pytest.raises(ConfigError) as err:
        run_md_jax(None, [start], MDSettings(steps=1), [tmp_path / "out"])
    message = str(err.value)
    assert "\n" not in message and "'md' extra" in message and "jax-md" in message
    xyz = tmp_path / "start.xyz"
    start.write(xyz)
    code = main(["md", str(tmp_path / "no-model"), "--structure", str(xyz), "--steps", "5", "--engine", "jax-md",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'md' extra" in err
    assert not (tmp_path / "out").exists()


def molecule_h2o():
    from ase.build import molecule

    return molecule("H2O")
