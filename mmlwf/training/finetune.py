"""Fine-tuning: a training that starts from a trained model (the ``finetune:`` section,
:class:`~mmlwf.settings.FinetuneSettings`; docs/architecture.md §7).

The source (``finetune.init_from``) is a run directory (its ``checkpoints/best``, the EMA
weights when it kept an EMA) or an exported ``.mmlwf`` file. What a fine-tuning run takes from
it and what it does not:

- the model settings (:func:`source_config`): the source's ``model.json`` ``model``; a setting
  the run's config gives must agree with it (``"auto"`` agrees with anything);
- the parameters (:func:`start_variables`, a new run only: a resumed run restores its own
  ``latest`` and never reads the source's parameters), except the output heads with
  ``reset_heads`` and, for elements of the target data the source never saw (not in its
  element energies), the rows of the per-element tables (:attr:`ModelKind.element_rows`): their
  embedding rows stay as the fresh initialisation made them and their energy shift and scale
  are set from the target's statistics (``init_from_stats``);
- not the element reference energies: the run's own (its ``stats.json``), so that data from
  another level of theory get their references and the network is kept.

An ensemble source keeps its member axis into an ensemble of the same size; any other
combination of sizes is refused (one line). ``finetune.freeze`` names parts of the model
(:attr:`ModelKind.parts`, the one home of their parameter patterns) whose updates the optimiser
sets to zero (:func:`frozen_labels`, ``optax.multi_transform``). ``model.json`` records the
source under ``metadata.init_from`` (:func:`source_metadata`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..ensemble import ensemble_size, member
from ..errors import ConfigError, DataError, did_you_mean
from ..rundir import BEST, LATEST, RunDir
from .config import Config

#: the ``model.json`` ``metadata`` key recording where a fine-tuning run started from
RECORD_KEY = "init_from"
#: the part :attr:`ModelKind.parts` names for the output layers (``reset_heads``)
HEADS = "heads"
#: optimiser labels of :func:`frozen_labels`
TRAINED, FROZEN = "trained", "frozen"


@dataclass
class Source:
    """A trained model to start from: ``path``, ``kind`` (``run`` or ``export``), ``info``
    (its ``model.json``); :meth:`variables` loads its parameters."""

    path: Path
    kind: str
    info: dict
    _variables: Any = field(default=None, repr=False)

    @property
    def members(self) -> int:
        return ensemble_size(self.info)

    @property
    def elements(self) -> set[int]:
        """The atomic numbers the source has element energies for (the elements it was trained on)."""
        return {int(z) for z in self.info.get("element_energies_by_Z") or {}}

    def record(self) -> dict:
        """What ``model.json`` records of the source: its path, kind and ``model.json`` digest."""
        digest = hashlib.sha256(json.dumps(self.info, sort_keys=True).encode()).hexdigest()
        return {"path": str(self.path), "kind": self.kind, "model_json_sha256": digest}

    def variables(self) -> Any:
        """The source's parameters (``best``, EMA when kept; an export's arrays)."""
        if self._variables is None:
            from .checkpoint import load_params

            self._variables = load_params(self.path, BEST)[0]
        return self._variables


def open_source(path: str | Path) -> Source:
    """The :class:`Source` at ``path``: a run directory with a ``best`` checkpoint or an exported
    file; one-line :class:`ConfigError` otherwise."""
    p = Path(path)
    where = f"finetune.init_from: {p}"
    if not p.exists():
        raise ConfigError(f"{where} does not exist")
    if p.is_dir():
        run = RunDir(p)
        if not run.is_run() or not run.has_checkpoint(BEST):
            raise ConfigError(f"{where} is not a trained run directory (no model.json or no checkpoints/best)")
        try:
            return Source(p, "run", run.info)
        except DataError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    from ..export import read_exported

    try:
        meta, variables = read_exported(p)
    except DataError as exc:
        raise ConfigError(f"{where} is neither a run directory nor an exported model ({exc})") from None
    return Source(p, "export", dict(meta["model_info"]), variables)


def _own_record(config: Config, run_dir: Path | None) -> dict | None:
    """The ``model.json`` of the run in ``run_dir`` when it is this fine-tuning's, resumable
    (a ``latest`` checkpoint) and from the same source: a resume reads nothing of the source."""
    run = None if run_dir is None else RunDir(run_dir)
    if run is None or not run.is_run() or not run.has_checkpoint(LATEST):
        return None
    info = run.info
    record = (info.get("metadata") or {}).get(RECORD_KEY) or {}
    return info if record.get("path") == str(config.finetune.init_from) else None


def source_config(config: Config, run_dir: str | Path | None = None) -> Config:
    """``config`` with the source's model settings (a resumed run's: its own ``model.json``'s);
    ``config`` itself when it fine-tunes nothing. A model setting ``config`` gives that
    contradicts the source's is a one-line :class:`ConfigError` naming it."""
    from ..models.registry import kind_of_config

    if config.finetune.init_from is None:
        return config
    info = _own_record(config, None if run_dir is None else Path(run_dir)) \
        or open_source(config.finetune.init_from).info
    kind = kind_of_config(info.get("model"))
    model = kind.stored_config(info["model"])
    for key, value in config.model.items():
        theirs = model.get(key)
        same = str(value).lower() == str(theirs).lower() if key == "type" else value == theirs
        if not same and value != "auto":
            raise ConfigError(f"model.{key}: {value!r} contradicts the source model's {theirs!r} (finetune.init_from "
                              f"{config.finetune.init_from}: its model settings are used; leave model.{key} out)")
    return dataclasses.replace(config, model=model)


def source_metadata(config: Config, run_dir: Path, metadata: Mapping | None) -> Mapping | None:
    """``metadata`` with the source's record under :data:`RECORD_KEY` (a resumed run's own)."""
    if config.finetune.init_from is None:
        return metadata
    own = _own_record(config, run_dir)
    record = own["metadata"][RECORD_KEY] if own else open_source(config.finetune.init_from).record()
    return {**dict(metadata or {}), RECORD_KEY: record}


def _names(tree: Any) -> list[str]:
    """The paths of ``tree``'s leaves below ``params`` (``"embed/embedding"``), in leaf order."""
    import jax

    def name(path) -> str:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return "/".join(keys[1:] if keys and keys[0] == "params" else keys)

    return [name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def part_patterns(kind: Any, parts: Sequence[str], setting: str) -> list[str]:
    """The parameter patterns of the named ``parts`` of a model kind (:attr:`ModelKind.parts`);
    one-line :class:`ConfigError` for a kind without parts or an unknown part."""
    known = dict(getattr(kind, "parts", ()) or ())
    if not known:
        raise ConfigError(f"finetune.{setting}: the model kind {getattr(kind, 'name', None)!r} names no parts")
    for part in parts:
        if part not in known:
            raise ConfigError(f"finetune.{setting}: unknown part {part!r}{did_you_mean(part, known)} of model kind "
                              f"{kind.name} (parts: {', '.join(known)})")
    return [known[p] for p in parts]


def _matches(patterns: Sequence[str], name: str) -> bool:
    return any(re.match(p, name) for p in patterns)


def frozen_labels(model: Any, config: Config) -> Callable[[Any], Any] | None:
    """``labels(params)``: :data:`FROZEN` or :data:`TRAINED` for each leaf (for
    ``optax.multi_transform``), or None when nothing is frozen."""
    if not config.finetune.freeze:
        return None
    import jax

    from ..models.registry import kind_of_model

    patterns = part_patterns(kind_of_model(model), config.finetune.freeze, "freeze")

    def labels(params: Any) -> Any:
        names = iter(_names(params))
        return jax.tree.map(lambda _: FROZEN if _matches(patterns, next(names)) else TRAINED, params)

    return labels


def start_variables(model: Any, config: Config, element_energies: Mapping | None,
                    fresh: list) -> tuple[list, str]:
    """``(members' variables, note)`` of a new fine-tuning run: the source's parameters, with
    the heads (``reset_heads``) and the rows of elements new to the source taken from ``fresh``
    (each member's initialisation, already set from the target's statistics)."""
    from ..models.registry import kind_of_model

    ft = config.finetune
    source = open_source(ft.init_from)
    where = f"finetune.init_from {source.path}"
    if source.members != len(fresh):
        raise ConfigError(f"{where}: the source has {source.members} member(s), this run trains {len(fresh)}: "
                          f"fine-tune with ensemble.size {source.members} (the member axis is kept)")
    variables = source.variables()
    members = [variables] if len(fresh) == 1 else [member(variables, k) for k in range(len(fresh))]
    kind = kind_of_model(model)
    reset = part_patterns(kind, [HEADS], "reset_heads") if ft.reset_heads else []
    if ft.freeze:
        patterns = part_patterns(kind, ft.freeze, "freeze")
        names = _names(fresh[0])
        for part, pattern in zip(ft.freeze, patterns):
            if not any(_matches([pattern], n) for n in names):
                raise ConfigError(f"finetune.freeze: part {part!r} matches no parameter of this model")
    new = sorted({int(z) for z in element_energies or {}} - source.elements)
    rows = list(getattr(kind, "element_rows", ())) if new else []
    out = [_merge(src, init, reset, rows, new, where) for src, init in zip(members, fresh)]
    from ase.data import chemical_symbols

    note = (f"fine-tuning from {source.path} ({source.kind}, its {'EMA ' if source.info.get('ema') else ''}"
            f"parameters)" + ("; heads re-initialised" if reset else "")
            + (f"; elements new to the source ({', '.join(chemical_symbols[z] for z in new)}): fresh embedding "
               "rows, energy shift and scale from the target's statistics" if rows else ""))
    return out, note


def _merge(src: Any, init: Any, reset: list[str], rows: list[str], new: list[int], where: str) -> Any:
    """``init``'s tree holding ``src``'s leaves, except the leaves matching ``reset`` and the rows
    ``new`` of the leaves matching ``rows`` (kept from ``init``)."""
    import jax
    import jax.numpy as jnp

    names = _names(init)
    src_leaves, src_def = jax.tree.flatten(src)
    init_leaves, init_def = jax.tree.flatten(init)
    if src_def != init_def or any(np.shape(a) != np.shape(b) for a, b in zip(src_leaves, init_leaves)):
        theirs = dict(zip(_names(src), (np.shape(a) for a in src_leaves)))
        ours = dict(zip(names, (np.shape(b) for b in init_leaves)))
        diff = next((n for n in sorted(set(theirs) | set(ours)) if theirs.get(n) != ours.get(n)), "?")
        raise ConfigError(f"{where}: its parameters do not fit the model ({diff}: {theirs.get(diff)} in the "
                          f"source, {ours.get(diff)} here)")
    leaves = []
    for name, s, i in zip(names, src_leaves, init_leaves):
        value = np.array(s, dtype=np.asarray(i).dtype)
        if _matches(reset, name):
            value = np.asarray(i)
        elif _matches(rows, name):
            value[new] = np.asarray(i)[new]
        leaves.append(jnp.asarray(value))
    return jax.tree.unflatten(init_def, leaves)


def energy_offset(forward: Callable, variables: Any, batches: Iterable) -> float:
    """``δ`` (eV per atom) minimising ``Σ_s (r_s − n_s δ)²`` over the structures of ``batches``
    (prepared, with ``E_target``): ``r_s`` the error of ``forward(variables, ·)``'s energy
    (target − prediction), ``n_s`` the structure's atom count. ``δ = Σ n_s r_s / Σ n_s²``."""
    import jax

    fn = jax.jit(forward)
    num = den = 0.0
    for b in batches:
        pred = np.asarray(fn(variables, b)["energy"], np.float64)
        mask = np.asarray(b.graph_mask)
        n = np.bincount(np.asarray(b.atom_graph)[np.asarray(b.atom_mask)], minlength=mask.size)[: mask.size]
        r = np.where(mask, np.asarray(b.E_target, np.float64) - pred, 0.0)
        num += float(np.sum(n * r))
        den += float(np.sum(np.where(mask, n, 0) ** 2))
    return num / den if den > 0 else 0.0


def align_energy(kind: Any, members: list, forward: Callable, batches: Sequence) -> tuple[list, str]:
    """``(members, note)``: each member's energy offset parameter (:attr:`ModelKind.energy_offset`)
    plus its :func:`energy_offset` on ``batches`` (the target's training data), so a source
    from another level of theory starts at the target's energies; unchanged, with a note
    saying so, for a kind without such a parameter."""
    import jax

    pattern = getattr(kind, "energy_offset", "")
    if not pattern:
        name = "this model" if kind is None else f"model type {kind.name}"
        return members, f"finetune.align_energy: {name} has no energy offset; energies not aligned"
    out, deltas = [], []
    for variables in members:
        delta = energy_offset(forward, variables, batches)
        leaves, tree = jax.tree.flatten(variables)
        out.append(jax.tree.unflatten(tree, [x + delta if _matches([pattern], n) else x
                                             for n, x in zip(_names(variables), leaves)]))
        deltas.append(delta)
    shown = ", ".join(f"{1000 * d:+.1f}" for d in deltas)
    return out, (f"energy shift aligned to the target data: {shown} meV/atom (the source's mean error per atom "
                 f"on {sum(int(np.sum(b.graph_mask)) for b in batches)} training structures)")


#: batches of the target's epoch 0 that :func:`aligned_start` evaluates the source on
ALIGN_BATCHES = 64


def aligned_start(job: Any, members: list, table: np.ndarray, note: str) -> tuple[list, str]:
    """:func:`align_energy` of a new fine-tuning run's ``members`` on the first
    :data:`ALIGN_BATCHES` batches of ``job``'s training loader (epoch 0), when
    ``finetune.align_energy`` is on; ``note`` extended by what was done."""
    from itertools import islice

    from ..models.registry import kind_of_model
    from .loaders import epoch_batches
    from .losses import prepare_batch

    if not job.config.finetune.align_energy:
        return members, note
    batches = [prepare_batch(b, table) for b in islice(epoch_batches(job.train_loader, 0, 0)[1], ALIGN_BATCHES)]
    members, aligned = align_energy(kind_of_model(job.model), members, job.forward, batches)
    return members, f"{note}; {aligned}"
