"""PhysNet as published (issue 14): the Coulomb kernel against PhysNet's formula in both
variants, the short-range ZBL, the exp-normal basis, the non-hierarchicality penalty, the
"auto" physics switches, and exact forces and invariances with every physics term on, in
float64, with a long pair list (every pair of a molecule) built by hand."""

from __future__ import annotations

import importlib.util
import math

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.data import covalent_radii

from mmlwf.batch import from_molecules, within_molecules
from mmlwf.constants import COULOMB_CONSTANT
from mmlwf.errors import ConfigError
from mmlwf.models import physnet
from mmlwf.models.pairs import exp_normal
from mmlwf.models.registry import get
from mmlwf.physics.coulomb import coulomb_kernel
from mmlwf.physics.zbl import ZBL_ON, zbl_atomic_energies

from .test_physnet import AMMONIUM, HYDROXIDE, METHANE, WATER, random_params, rotation

ETHANOL = "/work/shared/data/mlff/rmd17_ethanol_train_1000.xyz"
HAS_D3 = importlib.util.find_spec("mmlwf.physics.d3") is not None
SR = 4.0  # message-passing cutoff of the models here


# -- the published formulas, written out independently (numpy)


def physnet_kernel(r, sr_cut, lr_cut=None):
    """PhysNet's electrostatic_energy_per_atom per pair, divided by k_e q_i q_j (reference code)."""
    x = r / (sr_cut / 2)
    switch = np.where(r < sr_cut / 2, 6 * x**5 - 15 * x**4 + 10 * x**3, 1.0)
    ds = np.sqrt(r * r + 1.0)
    if lr_cut is None:
        return 0.5 * ((1 - switch) / ds + switch / r)
    e = 0.5 * ((1 - switch) * (1 / ds + ds / lr_cut**2 - 2 / lr_cut) + switch * (1 / r + r / lr_cut**2 - 2 / lr_cut))
    return np.where(r <= lr_cut, e, 0.0)


def zbl_reference(z1, z2, r):
    """ZBL universal repulsion (eV) of nuclei z1, z2 at r Å (Ziegler, Biersack, Littmark)."""
    a = 0.8854 * 0.52917721 / (z1**0.23 + z2**0.23)  # the screening length, 0.8854 Bohr radii
    x = r / a
    phi = (0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.40290 * x)
           + 0.02817 * np.exp(-0.20162 * x))
    return 14.399645 * z1 * z2 / r * phi


@pytest.mark.parametrize("lr_cut", [None, 9.0])
def test_coulomb_kernel_is_physnets_formula(x64, lr_cut):
    r = np.array([0.05, 0.3, 0.9, 1.5, 1.99, 2.0, 2.01, 3.3, 5.0, 8.7, 9.0, 9.5, 14.0])
    chi = np.asarray(coulomb_kernel(jnp.asarray(r), SR, lr_cut))
    np.testing.assert_allclose(0.5 * chi, physnet_kernel(r, SR, lr_cut), rtol=1e-13, atol=1e-15)
    f = lambda x: coulomb_kernel(x, SR, lr_cut)  # noqa: E731
    df = jax.vmap(jax.grad(f))
    h = 1e-7  # value, slope and curvature continuous at sr_cut/2 (the switch's end)
    for k in (f, df, jax.vmap(jax.grad(jax.grad(f)))):
        left, right = np.asarray(k(jnp.array([SR / 2 - h, SR / 2 + h])))
        assert abs(left - right) < 1e-5
    if lr_cut is None:  # bare 1/r beyond sr_cut/2: no cutoff
        np.testing.assert_allclose(chi[r >= SR / 2], 1 / r[r >= SR / 2], rtol=1e-14)
    else:  # value and slope 0 at lr_cut, 0 beyond
        assert abs(float(f(jnp.array(lr_cut)))) < 1e-15 and abs(float(df(jnp.array([lr_cut]))[0])) < 1e-14
        assert abs(float(f(jnp.array(lr_cut - 1e-3)))) < 1e-7
        np.testing.assert_array_equal(chi[r > lr_cut], 0.0)


def _ethanol_zbl(frames):
    out = []
    for at in frames:
        n = len(at)
        i, j = np.nonzero(~np.eye(n, dtype=bool))
        r = np.linalg.norm(at.positions[j] - at.positions[i], axis=1)
        e = zbl_atomic_energies(jnp.asarray(at.numbers), jnp.asarray(r), jnp.asarray(i), jnp.asarray(j),
                                jnp.ones(len(i)), n)
        full = 0.5 * zbl_reference(at.numbers[i].astype(float), at.numbers[j].astype(float), r)
        out.append((float(jnp.sum(e)), float(np.sum(full))))
    return np.array(out)


def test_zbl_is_off_at_bonding_distances_and_full_at_short_range(x64):
    frames = ase.io.read(ETHANOL, index=":50")
    e = _ethanol_zbl(frames)
    assert e[:, 1].min() > 20.0  # the unswitched repulsion: tens of eV at ethanol's geometries
    np.testing.assert_array_equal(e[:, 0], 0.0)  # switched off well below bonding distances
    # full ZBL at short range (below ZBL_ON times the covalent radii sum), partly on between
    for z1, z2 in ((1, 1), (6, 1), (8, 6), (26, 8)):
        rsum = covalent_radii[z1] + covalent_radii[z2]
        r = np.array([0.1, 0.5 * ZBL_ON * rsum, 0.99 * ZBL_ON * rsum, 0.6 * rsum, 0.8 * rsum])
        pair = np.asarray(zbl_atomic_energies(jnp.array([z1, z2]), jnp.asarray(r), jnp.zeros(5, int), jnp.ones(5, int),
                                              jnp.ones(5), 2))[0]
        e_pairs = [float(zbl_atomic_energies(jnp.array([z1, z2]), jnp.array([x]), jnp.array([0]), jnp.array([1]),
                                             jnp.ones(1), 2)[0]) for x in r]
        full = 0.5 * zbl_reference(z1, z2, r)
        np.testing.assert_allclose(e_pairs[:3], full[:3], rtol=1e-7)
        assert 0 < e_pairs[3] < full[3] and e_pairs[4] == 0.0
        assert pair == pytest.approx(sum(e_pairs))


def test_exp_normal_basis_is_physnets(x64):
    K, cut = 64, 5.0
    r = np.array([0.3, 1.0, 2.2, 4.0, 4.99, 5.0, 6.0])
    mu = np.linspace(1.0, np.exp(-cut), K)
    beta = (0.5 / ((1.0 - np.exp(-cut)) / K)) ** 2  # the reference's RBFLayer start values
    x = r / cut
    fcut = np.where(x < 1, 1 - 6 * x**5 + 15 * x**4 - 10 * x**3, 0.0)
    expected = fcut[:, None] * np.exp(-beta * (np.exp(-r)[:, None] - mu) ** 2)
    np.testing.assert_allclose(np.asarray(exp_normal(jnp.asarray(r), K, cut)), expected, rtol=1e-8, atol=1e-14)
    assert physnet.build_model({"basis": "exp_normal"}).num_basis_functions is None  # 64 when called


# -- the model with every term on


def config(lr_cut=None, **kw):
    return {"features": 8, "max_degree": 1, "num_iterations": 2, "basis": "exp_normal", "num_basis_functions": 8,
            "cutoff": SR, "num_residual": 1, "charges": True, "charge_scale": True, "coulomb": True,
            "coulomb_cutoff": lr_cut, "repulsion": True, "dispersion": HAS_D3, **kw}


def molecules(seed=0, noise=0.08):
    rng = np.random.default_rng(seed)
    out = []
    for (Z, R), q in ((WATER, 0.0), (AMMONIUM, 1.0), (HYDROXIDE, -1.0), (METHANE, 0.0)):
        out.append({"Z": np.asarray(Z), "R": np.asarray(R, float) + noise * rng.standard_normal(np.shape(R)), "Qtot": q})
    out[2]["R"][1] = out[2]["R"][0] + [0.0, 0.0, 0.62]  # a compressed O-H: the ZBL is partly on
    out[3]["R"] = out[3]["R"] + [3.0, 0.0, 0.0]
    return out


def batch_of(mols, n_graphs=6, n_atoms=20, n_pairs=120, n_long=200):
    """A float64 batch with the short list within SR and a long list of every pair of a molecule."""
    b = from_molecules(mols, n_graphs=n_graphs, n_atoms=n_atoms, n_pairs=n_pairs, cutoff=SR, dtype=np.float64)
    dst, src = within_molecules([len(m["Z"]) for m in mols])
    ldst, lsrc, lmask = (np.full(n_long, n_atoms - 1, np.int32), np.full(n_long, n_atoms - 1, np.int32),
                         np.zeros(n_long, bool))
    ldst[:len(dst)], lsrc[:len(dst)], lmask[:len(dst)] = dst, src, True
    return {"Z": b.Z, "R": b.R, "dst": b.pairs.dst, "src": b.pairs.src, "atom_graph": b.atom_graph,
            "atom_mask": b.atom_mask, "pair_mask": b.pairs.mask, "graph_mask": b.graph_mask, "Qtot": b.Qtot,
            "long_dst": ldst, "long_src": lsrc, "long_pair_mask": lmask}


def short(batch):
    """``batch`` without the long pair list (for :func:`random_params`, whose shapes do not depend on it)."""
    return {k: v for k, v in batch.items() if not k.startswith("long_")}


def evaluate(model, params):
    """``f(batch) -> outputs`` with ``forces = -dE/dR`` (jitted per shape)."""
    def run(batch, R):
        def total(R):
            out = model.apply({"params": params}, **{**batch, "R": R})
            return jnp.sum(out["energy"]), out
        (_, out), g = jax.value_and_grad(total, has_aux=True)(R)
        return {**out, "forces": -g}
    jitted = jax.jit(run)
    return lambda batch, R=None: jax.device_get(jitted(batch, batch["R"] if R is None else R))


@pytest.mark.parametrize("lr_cut", [None, 6.0])
def test_forces_exact_with_every_term_float64(x64, lr_cut):
    model = physnet.build_model(config(lr_cut))
    batch = batch_of(molecules())
    params = random_params(model, short(batch), seed=3)["params"]
    f = evaluate(model, params)
    R0 = jnp.asarray(batch["R"])
    out = f(batch)
    real = np.flatnonzero(batch["atom_mask"])
    F = np.asarray(out["forces"])
    assert np.abs(F[real]).max() > 0.1 and np.all(F[~batch["atom_mask"]] == 0)
    h = 1e-5
    fd = np.zeros_like(F)
    for i in real:
        for c in range(3):
            e = [float(np.sum(f(batch, R0.at[i, c].add(s * h))["energy"])) for s in (1, -1)]
            fd[i, c] = -(e[0] - e[1]) / (2 * h)
    # |F| reaches ~170 eV/Å (the compressed O-H's ZBL); the difference is ~3e-7 eV/Å
    np.testing.assert_allclose(F[real], fd[real], rtol=0, atol=1e-8 * np.abs(F[real]).max())


def _terms_matter(model, params, batch):
    """Each physics term changes the energy (so the checks here test them)."""
    base = np.asarray(evaluate(model, params)(batch)["energy"])
    for off in ({"coulomb": False}, {"repulsion": False}, {"charge_scale": False}):
        other = model.clone(**off)
        p = {k: v for k, v in params.items() if not (off.get("charge_scale") is False and k == "charge_scale")}
        assert np.abs(np.asarray(evaluate(other, p)(batch)["energy"]) - base).max() > 1e-3, off


def test_invariances_with_physics_on_float64(x64):
    model = physnet.build_model(config())
    mols = molecules(1)
    batch = batch_of(mols)
    params = random_params(model, short(batch), seed=4)["params"]
    f = evaluate(model, params)
    ref = f(batch)
    _terms_matter(model, params, batch)
    tol = dict(rtol=1e-10, atol=1e-10)
    # padding and company: each molecule alone in another budget
    for k, m in enumerate(mols):
        alone = f(batch_of([m], n_graphs=3, n_atoms=9, n_pairs=40, n_long=30))
        np.testing.assert_allclose(alone["energy"][0], ref["energy"][k], **tol)
        np.testing.assert_allclose(alone["dipole"][0], ref["dipole"][k], **tol)
    # rotation and translation: invariant energy, covariant forces and dipoles
    rng = np.random.default_rng(5)
    Q, t = rotation(rng), rng.standard_normal(3) * 4
    moved = f(batch_of([{**m, "R": m["R"] @ Q.T + t} for m in mols]))
    np.testing.assert_allclose(moved["energy"], ref["energy"], **tol)
    np.testing.assert_allclose(moved["forces"], ref["forces"] @ Q.T, **tol)
    np.testing.assert_allclose(moved["dipole"], ref["dipole"] @ Q.T, **tol)
    # atom order within each molecule
    perms = [rng.permutation(len(m["Z"])) for m in mols]
    permuted = f(batch_of([{**m, "Z": m["Z"][p], "R": m["R"][p]} for m, p in zip(mols, perms)]))
    np.testing.assert_allclose(permuted["energy"], ref["energy"], **tol)
    start = 0
    for m, p in zip(mols, perms):
        rows = start + np.arange(len(m["Z"]))
        np.testing.assert_allclose(permuted["forces"][rows], ref["forces"][rows][p], **tol)
        start += len(m["Z"])


def test_long_pairs_carry_coulomb_beyond_the_message_passing_cutoff(x64):
    # two ions 12 Å apart: no short pair, the no-cutoff Coulomb energy through the long list
    model = physnet.build_model(config(dispersion=False, repulsion=False, num_iterations=1))
    ions = {"Z": np.array([8, 1, 7]), "R": np.array([[0.0, 0, 0], [0, 0, 0.97], [12.0, 0, 0]]), "Qtot": 0.0}
    batch = batch_of([ions], n_graphs=2, n_atoms=4, n_pairs=8, n_long=8)
    params = random_params(model, short(batch), seed=6)["params"]
    out = evaluate(model, params)(batch)
    q, R = out["charges"][:3], ions["R"]
    r = np.linalg.norm(R[:, None] - R[None], axis=-1)
    i, j = np.nonzero(~np.eye(3, dtype=bool))
    e_coul = np.sum(COULOMB_CONSTANT * q[i] * q[j] * physnet_kernel(r[i, j], SR))
    no_coulomb = evaluate(model.clone(coulomb=False), params)(batch)
    np.testing.assert_allclose(out["energy"][0] - no_coulomb["energy"][0], e_coul, rtol=1e-10)
    assert abs(e_coul) > 1e-3


def test_non_hierarchicality_penalty_is_physnets(x64):
    from mmlwf.training.losses import batch_sums, loss_from_sums

    model = physnet.build_model(config(dispersion=False, num_iterations=3))
    batch = batch_of(molecules(2))
    params = random_params(model, short(batch), seed=7)["params"]
    out, inter = model.apply({"params": params}, **batch, capture_intermediates=lambda m, _: (m.name or "").startswith("output_"))
    o = [np.asarray(inter["intermediates"][f"output_{t}"]["__call__"][0])[:, 0, 0, :] for t in range(3)]
    real = batch["atom_mask"]
    expected = sum(np.mean(o[t] ** 2 / (o[t] ** 2 + o[t - 1] ** 2 + 1e-7), axis=-1)[real].mean() for t in (1, 2))
    assert expected > 0.05
    sums = batch_sums(out, {k: jnp.asarray(v) for k, v in batch.items()})
    assert float(loss_from_sums(sums, {"nh": 0.01}, "per_molecule", jnp)) == pytest.approx(0.01 * expected, rel=1e-12)


# -- "auto": resolved from the training data


def test_auto_physics_resolved_from_the_data(tmp_path):
    from mmlwf.packed import PackedDataset, PackedWriter
    from mmlwf.structure import Structure
    from mmlwf.training.data import data_facts

    def write(path, dipoles):
        with PackedWriter(path) as w:
            for i in range(2):
                s = Structure(Z=np.array([8, 1, 1]), R=np.asarray(WATER[1]) + 0.01 * i, E=0.0, index=i,
                              **({"D": np.array([0.0, 0.0, 0.4])} if dipoles else {}))
                w.add(s.checked("test"))
        return PackedDataset(path)

    plain, with_d = write(tmp_path / "plain", False), write(tmp_path / "dip", True)
    kind = get("physnet")
    cfg, note = kind.resolve_settings({"features": 8}, data_facts([with_d]))
    assert cfg == {"features": 8, "charges": True, "coulomb": True, "dispersion": False}
    assert note == "physics: charges+Coulomb on (data have dipoles), D3 off (dataset does not include dispersion)"
    cfg, note = kind.resolve_settings({}, data_facts([plain]))
    assert (cfg["charges"], cfg["coulomb"], cfg["dispersion"]) == (False, False, False)
    assert "neither dipoles nor atomic charges" in note
    facts = {"dipoles": False, "atomic_charges": False, "includes_dispersion": True}
    cfg, _ = kind.resolve_settings({"charges": True, "coulomb": False}, facts)
    assert (cfg["charges"], cfg["coulomb"], cfg["dispersion"]) == (True, False, True)
    cfg, _ = kind.resolve_settings({"coulomb": True, "dispersion": False}, facts)
    assert (cfg["charges"], cfg["coulomb"], cfg["dispersion"]) == (True, True, False)
    assert physnet.build_model(cfg).charges and physnet.long_pair_cutoff(physnet.build_model(cfg)) == math.inf


def test_old_model_json_settings_keep_their_meaning():
    # model.json of earlier runs holds only the keys the user gave: absent switches were off,
    # and the basis was 16 Bernstein functions (read back as such, while a new config gets
    # exp_normal); a Coulomb run had a 10 Å cutoff by default, which now means PhysNet's
    # no-cutoff kernel (the old kernel was neither published variant)
    given = {"features": 4, "num_iterations": 1, "charges": True}
    assert physnet.build_model(given).basis == "exp_normal"
    old = physnet.build_model(get("physnet").stored_config(given))
    assert (old.charges, old.coulomb, old.dispersion, old.repulsion, old.charge_scale) == (True, False, False,
                                                                                          False, False)
    assert old.basis == "bernstein" and old.num_basis_functions is None
    assert physnet.long_pair_cutoff(old) is None and physnet.pair_cutoff(old) == 5.0
    assert physnet.build_model({"charges": True, "coulomb": True}).coulomb_cutoff is None


# -- dispersion (mmlwf.physics.d3, contract 3)


def test_dispersion_adds_d3_over_the_long_pairs(x64):
    d3 = pytest.importorskip("mmlwf.physics.d3")
    model = physnet.build_model(config(dispersion=True, coulomb=False, repulsion=False))
    batch = batch_of(molecules(3))
    start = model.init(jax.random.PRNGKey(0), **batch)["params"]["dispersion"]  # s6, s8, a1, a2 of "hf"
    params = {**random_params(model, short(batch), seed=8)["params"], "dispersion": start}
    out = evaluate(model, params)(batch)
    base = evaluate(model.clone(dispersion=False), {k: v for k, v in params.items() if k != "dispersion"})(batch)
    w = batch["long_pair_mask"].astype(float)
    R = batch["R"]
    r = np.where(w > 0, np.linalg.norm(R[batch["long_src"]] - R[batch["long_dst"]], axis=1), 1.0)
    e = d3.d3_atomic_energies(jnp.asarray(batch["Z"]), jnp.asarray(r), jnp.asarray(batch["long_dst"]),
                              jnp.asarray(batch["long_src"]), jnp.asarray(w), len(batch["Z"]),
                              **d3.damping_parameters("hf"))
    per_graph = np.bincount(batch["atom_graph"], weights=np.asarray(e) * batch["atom_mask"], minlength=6)
    np.testing.assert_allclose(out["energy"] - base["energy"], per_graph * batch["graph_mask"], rtol=1e-6,
                               atol=1e-12)
    assert np.abs(per_graph).max() > 1e-3


def test_dispersion_refuses_elements_without_d3_reference_data():
    facts = {"elements": [1, 6, 104], "includes_dispersion": True}
    with pytest.raises(ConfigError, match="Z = 104"):
        physnet.resolve_settings({"type": "physnet"}, facts)
    resolved, note = physnet.resolve_settings({"type": "physnet", "dispersion": False}, facts)
    assert resolved["dispersion"] is False and "D3 off (set)" in note
