import pytest
from ase import units as u

from mmlwf.errors import ConfigError
from mmlwf.units import SourceUnits, factor


def test_factors_match_ase_codata():
    assert factor("energy", "Hartree") == pytest.approx(u.Hartree)
    assert factor("energy", "kcal/mol") == pytest.approx(0.0433641, rel=1e-5)
    assert factor("energy", "kJ/mol") == pytest.approx(0.0103643, rel=1e-5)
    assert factor("length", "Bohr") == pytest.approx(0.52917721, rel=1e-8)
    assert factor("dipole", "Debye") == pytest.approx(0.20819434, rel=1e-7)
    assert factor("esp", "Hartree/e") == pytest.approx(27.211386, rel=1e-7)


def test_force_factor_is_energy_over_length():
    units = SourceUnits(energy="Hartree", length="Bohr")
    assert units.force_factor == pytest.approx(u.Hartree / u.Bohr)
    assert units.as_dict()["force"] == "Hartree/Bohr"


def test_names_are_case_and_space_insensitive():
    assert factor("energy", " KCAL/MOL ") == factor("energy", "kcal/mol")
    assert factor("length", "Å") == 1.0


def test_unknown_unit_names_the_kind():
    with pytest.raises(ConfigError, match="unknown energy unit 'furlong'"):
        SourceUnits(energy="furlong")
    with pytest.raises(ConfigError, match="unknown length unit"):
        SourceUnits().replace(length="parsec")


def test_unknown_unit_suggests_the_closest_spelling_and_lists_the_known():
    with pytest.raises(ConfigError) as info:
        factor("energy", "kcal")
    message = str(info.value)
    assert "unknown energy unit 'kcal' (did you mean 'kcal/mol'?)" in message
    assert "known (in any case): ev, ha, hartree, kcal/mol, kj/mol, mev, ry, rydberg" in message
    assert factor("esp", "kcal/(mol*e)") == factor("esp", "kcal/mol/e")  # as the schema spells it
