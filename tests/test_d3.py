"""D3(BJ) dispersion (mmlwf.physics) against the reference implementation, the ``dftd3`` package
(simple-dftd3 1.7.0, a dev dependency) with its three-body term off, in float64."""

from __future__ import annotations

import tomllib
from importlib import resources

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.units import Bohr, Hartree
from dftd3.interface import DispersionModel, RationalDampingParam

from mmlwf.errors import ConfigError, DataError
from mmlwf.physics import D3Calculator
from mmlwf.physics.d3 import (
    D3Dispersion,
    d3_atomic_energies,
    damping_parameters,
    functionals,
)
from mmlwf.physics.d3_tables import d3_tables

from .conftest import shared_file
from .precision import FLOAT64_RTOL

E_TOL = 1e-6  # eV
F_TOL = 1e-5  # eV/Å


def reference(Z, R, functional):
    """Energy (eV), atomic energies (eV) and forces (eV/Å) of the dftd3 package, no ATM term."""
    model = DispersionModel(np.asarray(Z), np.asarray(R) / Bohr)
    param = RationalDampingParam(method=functional, atm=False)
    res = model.get_dispersion(param, grad=True)
    pairs = model.get_pairwise_dispersion(param)["additive pairwise energy"]
    return res["energy"] * Hartree, pairs.sum(axis=1) * Hartree, -res["gradient"] * Hartree / Bohr


def ours(Z, R, functional):
    atoms = Atoms(numbers=Z, positions=R)
    atoms.calc = D3Calculator(functional)
    return atoms.get_potential_energy(), atoms.get_potential_energies(), atoms.get_forces()


def assert_matches(Z, R, functional, what):
    e_ref, ea_ref, f_ref = reference(Z, R, functional)
    e, ea, f = ours(Z, R, functional)
    assert abs(e - e_ref) < E_TOL, f"{what}: energy {e} vs dftd3 {e_ref}"
    np.testing.assert_allclose(ea, ea_ref, rtol=0, atol=E_TOL, err_msg=f"{what}: atomic energies")
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=F_TOL, err_msg=f"{what}: forces")


def shared_molecules() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """24 molecules of the shared data: rMD17 ethanol and aspirin, sGDML ethanol, formaldehyde."""
    out = []
    for name in ("rmd17_ethanol_test_1000.xyz", "rmd17_aspirin_test.xyz"):
        for i, atoms in enumerate(ase.io.read(shared_file(name), index=":6")):
            out.append((f"{name}[{i}]", atoms.numbers, atoms.positions))
    data = np.load(shared_file("sgdml_ethanol_ccsd_t-train.npz"), allow_pickle=False)
    out += [(f"sgdml[{i}]", data["z"].astype(int), data["R"][i]) for i in range(0, 600, 100)]
    data = np.load(shared_file("h2co_b3lyp_4001.npz"), allow_pickle=False)
    for i in range(0, 3000, 500):
        n = int(data["N"][i])
        out.append((f"h2co[{i}]", data["Z"][i, :n], data["R"][i, :n]))
    return out


@pytest.mark.parametrize("functional", ["pbe0", "hf"])
def test_molecules_of_the_shared_data_match_dftd3(functional):
    molecules = shared_molecules()
    assert len(molecules) >= 20
    for what, Z, R in molecules:
        assert_matches(Z, R, functional, what)


def random_cluster(Z, rng) -> np.ndarray:
    """Positions of a cluster: each atom 1.5-4 Å from a random earlier one, >= 1.5 Å from all."""
    R = [np.zeros(3)]
    while len(R) < len(Z):
        anchor = R[rng.integers(len(R))]
        step = rng.normal(size=3)
        x = anchor + rng.uniform(1.5, 4.0) * step / np.linalg.norm(step)
        if min(np.linalg.norm(x - y) for y in R) >= 1.5:
            R.append(x)
    return np.array(R)


def test_random_clusters_of_every_element_match_dftd3():
    """Every element with D3 data (Z 1-103) in some cluster of 3-6 atoms, two orders of the
    elements, so a wrong table row (C6, reference CN, radius, r4/r2) of any element fails."""
    rng = np.random.default_rng(14)
    max_z = d3_tables().max_z
    assert max_z >= 94
    checked = set()
    for _ in range(2):
        elements = rng.permutation(np.arange(1, max_z + 1))
        start = 0
        while start < elements.size:
            size = int(rng.integers(3, 7))
            Z = elements[start:start + size]
            if Z.size < 3:
                Z = np.concatenate([Z, rng.integers(1, max_z + 1, 3 - Z.size)])
            start += size
            assert_matches(Z, random_cluster(Z, rng), "pbe0", f"cluster {Z.tolist()}")
            checked.update(Z.tolist())
    assert checked == set(range(1, max_z + 1))


def test_cutoffs_of_coordination_numbers_and_pairs_are_the_references():
    """Two water molecules 25 Å apart (beyond the 40 bohr of the CN, within the 60 bohr of the
    pair sum) and a third 40 Å away (beyond both)."""
    water = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    R = np.concatenate([water, water + [25.0, 0, 0], water + [0, 40.0, 0]])
    assert_matches(np.array([8, 1, 1] * 3), R, "pbe0", "distant waters")


def test_crowded_atom_whose_reference_weights_would_underflow_matches_dftd3():
    """A carbon with 24 hydrogens at 1.1 Å: CN ~ 24, 20 above carbon's largest reference CN, so
    exp(-4 ΔCN²) underflows for every reference unless normalised as simple-dftd3 does."""
    k = np.arange(24) + 0.5
    theta, phi = np.arccos(1 - 2 * k / 24), np.pi * (1 + 5**0.5) * k
    shell = 1.1 * np.stack([np.cos(phi) * np.sin(theta), np.sin(phi) * np.sin(theta), np.cos(theta)], 1)
    R = np.concatenate([np.zeros((1, 3)), shell])
    assert_matches(np.array([6] + [1] * 24), R, "pbe0", "crowded carbon")
    f32 = d3_atomic_energies(np.array([6] + [1] * 24), np.linalg.norm(shell, axis=1).astype(np.float32),
                             np.zeros(24, int), np.arange(1, 25), np.ones(24, np.float32), 25,
                             **damping_parameters("pbe0"))
    assert np.all(np.isfinite(f32))


def test_damping_parameters_are_the_references():
    """The stored values equal the dftd3 package's own parameter file, and every stored name
    gives the reference's energy (so the whole table of names and values is right)."""
    toml = tomllib.loads((resources.files("dftd3") / "parameters.toml").read_text())
    defaults = toml["default"]["parameter"]["d3"]["bj"]
    for name in ("hf", "pbe", "pbe0", "b3lyp", "tpss", "revpbe", "b97d", "pw6b95"):
        published = {**defaults, **toml["parameter"][name]["d3"]["bj"]}
        assert damping_parameters(name) == {k: published[k] for k in ("s6", "s8", "a1", "a2")}
    assert damping_parameters("B97-D") == damping_parameters("b97d")
    assert {"hf", "pbe0", "b3lyp", "pw6b95", "revpbe"} <= set(functionals())

    atoms = ase.io.read(shared_file("rmd17_ethanol_test_1000.xyz"), index=0)
    Z, R = atoms.numbers, atoms.positions
    vec = R[:, None] - R[None]
    dst, src = np.nonzero(~np.eye(len(Z), dtype=bool))
    r = np.linalg.norm(vec[dst, src], axis=-1)
    with jax.enable_x64(True):
        energy = jax.jit(lambda p: d3_atomic_energies(Z, r, dst, src, np.ones_like(r), len(Z), **p).sum())
        for name in functionals():
            e_ref = DispersionModel(Z, R / Bohr).get_dispersion(
                RationalDampingParam(method=name, atm=False), grad=False)["energy"] * Hartree
            assert abs(float(energy(damping_parameters(name))) - e_ref) < E_TOL, name


def test_unknown_functional_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"unknown D3\(BJ\) functional 'pbe00'.*did you mean 'pbe0'") as err:
        damping_parameters("pbe00")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="pbe00"):
        D3Calculator("pbe00")
    with pytest.raises(ConfigError, match="kept positive"):  # a1 = 0: softplus cannot start there
        D3Dispersion("dsdblyp").start_values()


def test_calculator_refuses_periodic_systems_and_elements_without_data():
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=[10, 10, 10], pbc=True)
    atoms.calc = D3Calculator("pbe0")
    with pytest.raises(DataError, match="periodic"):
        atoms.get_potential_energy()
    atoms = Atoms(numbers=[104, 1], positions=[[0, 0, 0], [2.0, 0, 0]])
    atoms.calc = D3Calculator("pbe0")
    with pytest.raises(DataError, match="Z=104"):
        atoms.get_potential_energy()


def padded_inputs(Z, R):
    """Every ordered pair of a molecule, then two padding atoms (Z 0, both at the origin, one
    coincident with each other) and padding pairs between them with r = 0 and weight 0."""
    n = len(Z)
    dst, src = np.nonzero(~np.eye(n, dtype=bool))
    r = np.linalg.norm(R[dst] - R[src], axis=-1)
    Zp = np.concatenate([Z, [0, 0]])
    dst_p = np.concatenate([dst, [n, n + 1, n + 1, 0]])
    src_p = np.concatenate([src, [n + 1, n, n + 1, n]])
    r_p = np.concatenate([r, [0.0, 0.0, 0.0, np.linalg.norm(R[0])]])
    w_p = np.concatenate([np.ones_like(r), np.zeros(4)])
    return (Z, r, dst, src, np.ones_like(r), n), (Zp, r_p, dst_p, src_p, w_p, n + 2)


def test_padding_changes_nothing_and_gradients_stay_finite(x64):
    Z = np.array([8, 1, 1, 6])
    R = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692], [3.0, 0.2, 0.0]])
    plain, padded = padded_inputs(Z, R)
    p = damping_parameters("pbe0")
    e = d3_atomic_energies(*plain, **p)
    e_pad = d3_atomic_energies(*padded, **p)
    np.testing.assert_allclose(e_pad[:4], e, rtol=FLOAT64_RTOL, atol=0)
    assert np.all(e_pad[4:] == 0)

    Zp, r_p, dst_p, src_p, w_p, n_p = padded
    grad_r, grad_p = jax.grad(lambda r, q: d3_atomic_energies(Zp, r, dst_p, src_p, w_p, n_p, **q).sum(),
                              argnums=(0, 1))(jnp.asarray(r_p), p)
    assert np.all(np.isfinite(grad_r)) and np.all(grad_r[-4:] == 0)
    assert all(np.isfinite(v) and v != 0 for v in grad_p.values())


def test_float32_agrees_with_float64():
    Z = np.array([8, 1, 1, 6, 17])
    R = random_cluster(Z, np.random.default_rng(3))
    plain, _ = padded_inputs(Z, R)
    Zs, r, dst, src, w, n = plain
    p = damping_parameters("hf")
    e32 = d3_atomic_energies(Zs, r.astype(np.float32), dst, src, w.astype(np.float32), n, **p)
    assert e32.dtype == jnp.float32
    with jax.enable_x64(True):
        e64 = d3_atomic_energies(Zs, r, dst, src, w, n, **p)
    np.testing.assert_allclose(np.asarray(e32), np.asarray(e64), rtol=1e-5, atol=1e-7)


def test_dispersion_module_starts_at_the_functional_and_trains_every_parameter(x64):
    Z = np.array([8, 1, 1, 6])
    R = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692], [3.0, 0.2, 0.0]])
    (Zs, r, dst, src, w, n), _ = padded_inputs(Z, R)
    module = D3Dispersion()  # PhysNet's default start: HF
    params = module.init(jax.random.PRNGKey(0), Zs, jnp.asarray(r), dst, src, w, n)
    start = {k[: -len("_raw")]: float(jax.nn.softplus(v)) for k, v in params["params"].items()}
    assert start == pytest.approx(damping_parameters("hf"), rel=1e-12)
    e = module.apply(params, Zs, jnp.asarray(r), dst, src, w, n)
    np.testing.assert_allclose(e, d3_atomic_energies(Zs, r, dst, src, w, n, **damping_parameters("hf")),
                               rtol=1e-12)
    grads = jax.grad(lambda q: module.apply(q, Zs, jnp.asarray(r), dst, src, w, n).sum())(params)
    assert set(grads["params"]) == {"s6_raw", "s8_raw", "a1_raw", "a2_raw"}
    assert all(np.isfinite(g) and g != 0 for g in grads["params"].values())
