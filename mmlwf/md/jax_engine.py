"""The JAX-MD engine of ``mmlwf md --engine jax-md`` (the optional ``md`` extra).

The model's energy and forces (every physics term of the model: its forward) drive JAX-MD's
integrator steps inside one compiled call of many steps (a *chunk*: a ``lax.scan`` over
trajectory frames of an inner ``scan`` over ``traj_every`` steps). Units are ASE's (Å, eV, amu,
time ``dt_fs * ase.units.fs``), so with the same start momenta NVE follows ASE's velocity
Verlet step for step. NVT is JAX-MD's BAOAB Langevin step with the centre-of-mass momentum
removed after the stochastic step (as ASE's ``FixCom``).

**Pair lists.** JAX-MD ``Sparse`` neighbour lists (free space, no cell list) within the model's
``pair_cutoff`` plus a skin, and a second one within ``long_pair_cutoff`` when the model has a
finite long-range cutoff (``math.inf``: every ordered pair, fixed). JAX-MD's fill index is the
atom count ``n``, which is the batch's padding atom, so ``dst, src = idx`` and ``mask = dst < n``
map onto :class:`~mmlwf.batch.Pairs` as they are. The lists are updated inside the force
evaluation, at the positions the forces are computed at. A list whose capacity overflowed is
never used: the chunk is discarded, the list rebuilt at the chunk's start positions with twice
the capacity, and the chunk run again from its saved start (same random keys: same noise).

**Ensembles.** One evaluation per step gives the member-mean forces that drive the integrator
and the per-atom force spread (times the fitted scale): the stop checks of
:mod:`mmlwf.md.stops` run on every step inside the compiled loop, so ``stopped.step`` is the
exact step; after a stop the rest of the chunk holds the state.

**Replicas.** Several starts of one composition (the same atoms in the same order) run as one
batch (``vmap``) in one call; each gets its own output folder.

JAX-MD's ``velocity_verlet`` rounds ``dt`` to float32, and its simulators' jitted step
functions cannot return the model's other outputs of the same evaluation; the steps are
therefore composed here from JAX-MD's ``momentum_step``, ``position_step`` and
``stochastic_step``, in the order of its ``nve`` and ``nvt_langevin``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from . import stops
from .common import initial_velocities
from .output import RunWriter
from .settings import MDSettings, degrees_of_freedom

#: steps per compiled call (rounded up to a multiple of traj_every)
CHUNK_STEPS = 1000
#: neighbour-list skin (Å) beyond the pair cutoff: the list is rebuilt when an atom moved half of it
SKIN_A = 0.5
MISSING = ("md: --engine jax-md needs the optional package jax-md: install the 'md' extra "
           "(uv sync --extra md, or pip install 'mmlwf[md]')")


def import_jax_md():
    """``(partition, simulate, space)`` of jax_md, or a one-line ConfigError naming the extra."""
    try:
        from jax_md import partition, simulate, space
    except ImportError:
        raise ConfigError(MISSING) from None
    return partition, simulate, space


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


class _Lists:
    """The neighbour lists of ``n`` atoms within ``cutoff`` (+ skin), allocated at a capacity."""

    def __init__(self, partition, displacement, n: int, cutoff: float, skin: float) -> None:
        self.n, self.limit = n, n * (n - 1)
        self.fn = partition.neighbor_list(displacement, 1.0, cutoff, dr_threshold=skin, capacity_multiplier=1.0,
                                          disable_cell_list=True, format=partition.Sparse)

    def occupancy(self, R: np.ndarray) -> int:
        """Pairs within cutoff + skin of the structure ``R (n, 3)``."""
        return int(self.fn.allocate(R).max_occupancy)

    def allocate(self, Rs, capacity: int):
        """The lists of every replica ``Rs (r, n, 3)`` with ``capacity`` slots (at most n(n-1))."""
        import jax
        import jax.numpy as jnp

        capacity = max(1, min(int(capacity), self.limit))
        template = self.fn.allocate(Rs[0])
        template = dataclasses.replace(template, idx=jnp.full((2, capacity), self.n, jnp.int32),
                                       max_occupancy=capacity,
                                       reference_position=jnp.full_like(template.reference_position, jnp.inf))
        return jax.vmap(lambda R: self.fn.update(R, template))(Rs)


def _check_starts(starts) -> None:
    Z = starts[0].numbers
    for k, a in enumerate(starts[1:], start=1):
        if len(a) != len(Z) or np.any(a.numbers != Z):
            raise DataError(f"start structure {k} ({a.get_chemical_formula()}) is not the atoms of start 0 "
                            f"({starts[0].get_chemical_formula()}) in the same order: batched runs need one composition")


def run_md_jax(trained, starts, settings: MDSettings, outdirs, *, charge: float = 0.0, dtype: str = "float32",
               overwrite: bool = False, info: dict | list[dict] | None = None, capacity: int | None = None,
               long_capacity: int | None = None, chunk_steps: int = CHUNK_STEPS, skin_A: float = SKIN_A) -> list[dict]:
    """Run ``settings.steps`` steps of each start (``ase.Atoms``, one composition) as one batch; write
    ``outdirs[k]`` for start ``k`` as :mod:`mmlwf.md.output` describes; return their ``md.json`` contents.

    Replica ``k`` draws its velocities with seed ``settings.seed + k``. ``capacity`` /
    ``long_capacity``: initial neighbour-list slots (default: the next power of two above what the
    starts need); an overflow doubles them and re-runs the chunk. ``dtype``: the network's float
    type (``float64`` needs ``jax_enable_x64``). ``info``: added to every ``md.json`` (a list: one per start)."""
    import jax
    import jax.numpy as jnp
    from ase import units

    partition, simulate, space = import_jax_md()
    from ..batch import Pairs, device_fields, from_molecules
    from ..ensemble import ensemble_size, spread_scale
    from ..inference import model_forward

    settings.check()
    starts = [a.copy() for a in starts]
    outdirs = [Path(p) for p in outdirs]
    if not starts or len(outdirs) != len(starts):
        raise ConfigError(f"md: {len(starts)} start structures for {len(outdirs)} output folders")
    _check_starts(starts)
    for o in outdirs:  # before anything compiles
        if o.exists() and not overwrite:
            raise FileExistsError(f"{o} exists (use --overwrite to replace it)")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError("md: dtype float64 needs jax_enable_x64 (set JAX_ENABLE_X64=1)")
    kind = trained.kind
    if kind is None or not kind.predicts_energy:
        raise ConfigError(f"{trained.run_dir}: MD needs an energy model")
    members = ensemble_size(trained.info)
    if settings.uses_uncertainty and members < 2:
        raise ConfigError("md: uncertainty trust levels need an ensemble model (model.json has no ensemble)")
    from ..calculator import MMLWFCalculator

    MMLWFCalculator.check_atoms(_ChecksOnly(trained), starts[0])  # pbc, elements: one-line DataErrors
    n, r = len(starts[0]), len(starts)
    Z = np.asarray(starts[0].numbers)
    ftype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    forward = model_forward(trained.model, trained.ensemble_kind)  # a shallow one: per-head forces
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), trained.params)
    u_scale = spread_scale(trained.info, "forces")
    reference = float(np.asarray(trained.reference, np.float64)[Z].sum())
    cutoff, long_cutoff = trained.pair_cutoff, trained.long_pair_cutoff

    # velocities and the starts' arrays
    momenta = []
    for k, a in enumerate(starts):
        a.calc = None
        if settings.ensemble == "nvt":
            from ase.constraints import FixCom

            a.set_constraint(FixCom())  # ASE then counts 3N - 3 degrees of freedom, as ours
        initial_velocities(a, dataclasses.replace(settings, seed=settings.seed + k))
        momenta.append(a.get_momenta())
    R0 = jnp.asarray(np.stack([a.positions for a in starts]), ftype)
    P0 = jnp.asarray(np.stack(momenta), ftype)
    mass = jnp.asarray(starts[0].get_masses(), ftype)[:, None]
    dt = settings.dt_fs * units.fs
    kT = units.kB * settings.temperature_K
    gamma = settings.friction_per_fs / units.fs
    dof = degrees_of_freedom(n, settings.ensemble)

    displacement, shift = space.free()
    short = _Lists(partition, displacement, n, cutoff, skin_A)
    long = None if long_cutoff is None or math.isinf(long_cutoff) else _Lists(partition, displacement, n,
                                                                               long_cutoff, skin_A)
    base = device_fields(from_molecules([{"Z": Z, "R": starts[0].positions, "Qtot": charge}], n_graphs=2,
                                        n_atoms=n + 1, n_pairs=1, pairs=(np.zeros(0), np.zeros(0)),
                                        dtype=np.dtype(dtype)))
    static_long = None
    if long_cutoff is not None and math.isinf(long_cutoff):
        i, j = np.nonzero(~np.eye(n, dtype=bool))
        # carried per replica, not a constant of the compiled chunk (XLA would fold the model's gathers over it)
        static_long = Pairs(*(jnp.broadcast_to(jnp.asarray(x), (r, i.size)) for x in (i.astype(np.int32),
                                                                                      j.astype(np.int32),
                                                                                      np.ones(i.size, bool))), None)
    pad_row = jnp.asarray(base.R[n:], ftype)
    bonds = stops.bond_list(Z, starts[0].positions) if settings.bond_factor is not None else \
        (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0))
    bonds_j = tuple(jnp.asarray(b) for b in bonds)
    lim = jnp.asarray(stops.limits(settings), ftype)

    def pairs_of(nbrs):
        dst, src = nbrs.idx[0], nbrs.idx[1]
        return Pairs(dst, src, dst < n, None)

    def evaluate(R, nbrs, lnbrs):
        """Forces (n, 3) eV/Å and ``(energy eV, per-atom uncertainty or None, lists, closest pair)``."""
        nbrs = nbrs.update(R)
        if lnbrs is not None and static_long is None:
            lnbrs = lnbrs.update(R)
        Rp = jnp.concatenate([R, pad_row]).astype(dtype)
        pairs = pairs_of(nbrs)
        lp = lnbrs if static_long is not None else (None if lnbrs is None else pairs_of(lnbrs))
        batch = base._replace(R=Rp, pairs=pairs, long_pairs=lp)
        out = forward(params, batch)
        u = out["forces_spread"][:n].astype(ftype) * u_scale if members > 1 else None
        closest = stops.closest_pair(Rp.astype(ftype), pairs.dst, pairs.src, pairs.mask, jnp)
        return out["forces"][:n].astype(ftype), (out["energy"][0].astype(ftype), u, nbrs, lnbrs, closest)

    def observe(state, aux, step):
        """Stop check and the row of a state: ``(code, value, a, b), row``."""
        energy, u, _, _, closest = aux
        code, value, a, b = stops.check(energy, closest, stops.stretched_bond(state.position, bonds_j, jnp), u,
                                        lim, jnp)
        ekin = jnp.sum(state.momentum ** 2 / (2 * state.mass))
        u_max = jnp.max(u) if u is not None else jnp.asarray(jnp.nan, ftype)
        i32 = jnp.int32
        row = (step, energy, ekin, closest[0], closest[1].astype(i32), closest[2].astype(i32), u_max)
        return (code.astype(i32), value.astype(ftype), a.astype(i32), b.astype(i32)), row

    def integrate(state, nbrs, lnbrs):
        s = simulate.momentum_step(state, dt / 2)
        if settings.ensemble == "nve":
            s = simulate.position_step(s, shift, dt)
        else:
            s = simulate.position_step(s, shift, dt / 2)
            s = simulate.stochastic_step(s, dt, kT, gamma)
            p_com = jnp.sum(s.momentum, axis=0) / jnp.sum(s.mass)
            s = s.set(momentum=s.momentum - s.mass * p_com)
            s = simulate.position_step(s, shift, dt / 2)
        force, aux = evaluate(s.position, nbrs, lnbrs)
        s = simulate.momentum_step(s.set(force=force), dt / 2)
        return s, aux

    def one_step(carry, _):
        step, stop = carry[3], carry[4]

        def advance(c):
            state, nbrs, lnbrs, step, stop = c
            state, aux = integrate(state, nbrs, lnbrs)
            new_stop, row = observe(state, aux, step + 1)
            stop = jax.tree.map(lambda new, old: jnp.where(new_stop[0] > 0, new, old), (*new_stop, step + 1), stop)
            return (state, aux[2], aux[3], step + 1, stop), row + (jnp.asarray(True),)

        def hold(c):
            nan = jnp.asarray(jnp.nan, ftype)
            return c, (c[3], nan, nan, nan, jnp.int32(-1), jnp.int32(-1), nan, jnp.asarray(False))

        return jax.lax.cond((stop[0] == 0) & (step < settings.steps), advance, hold, carry)

    def block(carry, _):
        carry, rows = jax.lax.scan(one_step, carry, None, length=settings.traj_every)
        state = carry[0]
        return carry, (rows, carry[3], state.position, state.momentum, state.force)

    blocks = max(1, -(-min(chunk_steps, settings.steps) // settings.traj_every))
    run_chunk = jax.jit(jax.vmap(lambda carry: jax.lax.scan(block, carry, None, length=blocks)))

    def init(R, P, nbrs, lnbrs, key):
        force, aux = evaluate(R, nbrs, lnbrs)
        state = simulate.NVTLangevinState(R, P, force, mass, key) if settings.ensemble == "nvt" else \
            simulate.NVEState(R, P, force, mass)
        zero = jnp.int32(0)
        stop, row = observe(state, aux, zero)
        return (state, aux[2], aux[3], zero, (*stop, zero)), row

    init_all = jax.jit(jax.vmap(init))
    keys = jnp.stack([jax.random.PRNGKey(settings.seed + 1 + k) for k in range(r)])
    cap = capacity or _pow2(max(short.occupancy(np.asarray(R)) for R in R0) * 5 // 4)
    lcap = None if long is None else (long_capacity or _pow2(max(long.occupancy(np.asarray(R)) for R in R0) * 5 // 4))
    reruns, grown = 0, 0
    t0 = time.perf_counter()
    while True:  # lists that hold every pair of the starts (checked before anything compiles)
        nbrs, lnbrs = short.allocate(R0, cap), static_long if long is None else long.allocate(R0, lcap)
        cap, lcap, overflowed = _grown((None, nbrs, lnbrs), cap, lcap)
        if not overflowed:
            break
        grown += 1
    carry, row0 = init_all(R0, P0, nbrs, lnbrs, keys)
    first_s = time.perf_counter() - t0
    host = _Host(starts, outdirs, settings, members > 1, reference, dof, overwrite)
    try:
        host.start(jax.device_get(carry), jax.device_get(row0))
        wall, compile_s = 0.0, 0.0
        compiled: dict = {}
        while not host.finished():
            start = carry
            if (cap, lcap) not in compiled:  # one compilation per list capacity
                t1 = time.perf_counter()
                compiled[cap, lcap] = run_chunk.lower(start).compile()
                compile_s += time.perf_counter() - t1
            t1 = time.perf_counter()
            carry, out = compiled[cap, lcap](start)
            t1 = time.perf_counter()
            out = jax.device_get(out)
            wall += time.perf_counter() - t1
            cap, lcap, overflowed = _grown(carry, cap, lcap)
            if overflowed:  # discard the chunk; rebuild the lists where it started, larger
                reruns += 1
                positions = start[0].position
                carry = (start[0], short.allocate(positions, cap),
                         start[2] if long is None else long.allocate(positions, lcap), start[3], start[4])
                continue
            host.chunk(jax.device_get(carry), out)
        lists = {"skin_A": skin_A, "capacity": cap, "long_capacity": lcap, "grown_at_start": grown, "chunk_reruns": reruns,
                 "pair_cutoff_A": cutoff, "long_pair_cutoff_A": long_cutoff}
        extra = {"engine": "jax-md", "replicas": r, "ensemble_members": members, "dtype": dtype,
                 "chunk_steps": blocks * settings.traj_every, "compile_s": compile_s, "neighbour_lists": lists}
        infos = info if isinstance(info, list) else [info or {}] * r
        return host.finish(wall, first_s, [{**extra, **i} for i in infos])
    except BaseException:
        host.discard()
        raise


def _grown(carry, cap: int, lcap: int | None) -> tuple[int, int | None, bool]:
    """The capacities after a chunk: doubled for each list that overflowed in any replica."""
    import numpy as np

    over = bool(np.any(np.asarray(carry[1].did_buffer_overflow)))
    lover = hasattr(carry[2], "did_buffer_overflow") and bool(np.any(np.asarray(carry[2].did_buffer_overflow)))
    return cap * 2 if over else cap, (lcap * 2 if lover else lcap), over or lover


class _ChecksOnly:
    """What :meth:`MMLWFCalculator.check_atoms` reads of a calculator."""

    def __init__(self, trained) -> None:
        self.model, self.reference = trained.model, np.asarray(trained.reference, np.float64)


class _Host:
    """The host side of a batched run: one :class:`RunWriter` per replica, fed from the
    per-step rows and block-end frames of each chunk."""

    def __init__(self, starts, outdirs, settings: MDSettings, uncertainty: bool, reference: float, dof: int,
                 overwrite: bool) -> None:
        from ase import units

        self.starts, self.settings, self.reference = starts, settings, reference
        self.t_factor = 2.0 / (dof * units.kB)
        self.writers: list[RunWriter] = []
        for o in outdirs:
            self.writers.append(RunWriter(o, settings, uncertainty=uncertainty, overwrite=overwrite))
        r = len(starts)
        self.stopped: list[dict | None] = [None] * r
        self.steps_done, self.last_frame = [0] * r, [-1] * r

    def finished(self) -> bool:
        return all(s is not None or d >= self.settings.steps for s, d in zip(self.stopped, self.steps_done))

    def _stop(self, k: int, stop) -> int:
        """Replica ``k``'s last step (its stop step or the run's end); records the stop."""
        code, value, a, b, step = (np.asarray(x)[k] for x in stop)
        if code and self.stopped[k] is None:
            self.stopped[k] = stops.stop_record(code, step, self.settings.dt_fs, value, a, b)
        return int(step) if code else self.settings.steps

    def _rows(self, k: int, rows, last: int) -> dict:
        """Write replica ``k``'s valid rows up to ``last``; ``{step: (energy, u)}``."""
        w, seen = self.writers[k], {}
        step, energy, ekin, d, i, j, u, valid = (np.asarray(x)[k].reshape(-1) for x in rows)
        for m in np.flatnonzero(valid & (step <= last)):
            s, e, uu = int(step[m]), float(energy[m]) + self.reference, float(u[m])
            w.distance(s, float(d[m]), int(i[m]), int(j[m]))
            if w.wants_row(s, last):
                w.row(s, e, float(ekin[m]), float(ekin[m]) * self.t_factor, float(d[m]),
                      None if np.isnan(uu) else uu)
            seen[s] = (e, uu)
            self.steps_done[k] = max(self.steps_done[k], s)
        return seen

    def _frame(self, k: int, step: int, R, P, F, energy_u) -> None:
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = self.starts[k].copy()
        atoms.positions = np.asarray(R, np.float64)
        atoms.set_momenta(np.asarray(P, np.float64), apply_constraint=False)
        atoms.calc = SinglePointCalculator(atoms, energy=energy_u[0], forces=np.asarray(F, np.float64))
        self.writers[k].frame(atoms, step, None if np.isnan(energy_u[1]) else energy_u[1])
        self.last_frame[k] = step

    def start(self, carry, row0) -> None:
        """Step 0 of every replica: its row, its frame and its stop check."""
        state = carry[0]
        for k in range(len(self.starts)):
            last = self._stop(k, carry[4])
            rows = tuple(np.asarray(x)[:, None] for x in row0) + (np.ones((len(self.starts), 1), bool),)
            seen = self._rows(k, rows, last)
            self._frame(k, 0, state.position[k], state.momentum[k], state.force[k], seen[0])

    def chunk(self, carry, out) -> None:
        """One chunk's rows and frames of every replica still running."""
        rows, block_step, R, P, F = out
        for k in range(len(self.starts)):
            if self.stopped[k] is not None or self.steps_done[k] >= self.settings.steps:
                continue
            last = self._stop(k, carry[4])
            seen = self._rows(k, rows, last)
            for b, s in enumerate(np.asarray(block_step)[k]):
                s = int(s)
                on_grid = s % self.settings.traj_every == 0 or s == last
                if on_grid and self.last_frame[k] < s <= last and s in seen:
                    self._frame(k, s, R[k, b], P[k, b], F[k, b], seen[s])

    def finish(self, wall: float, first_s: float, extras: list[dict]) -> list[dict]:
        return [w.finish(n_atoms=len(a), formula=a.get_chemical_formula(), steps_done=d, wall_s=wall,
                         first_s=first_s, stopped=s, extra=e)
                for w, a, d, s, e in zip(self.writers, self.starts, self.steps_done, self.stopped, extras)]

    def discard(self) -> None:
        for w in self.writers:
            w.discard()
