"""The model registry: every model kind by its ``model.type`` name, the one place that says
what a kind is (its settings, how it is built, its forward, its predictions, metrics, plots
and whether it can be exported or drive a calculator).

Importable without jax: implementations are named as ``"module:attribute"`` strings (or
given as callables) and imported on first use. The built-in kinds are ``physnet`` (energy,
forces, optionally charges) and ``dcmnet`` (distributed charges fitted to the ESP).

Adding a kind is one module plus one :func:`register` call. For the kind to exist in every
process (the workflow's rule scripts run in subprocesses), name its module in the
``MMLWF_PLUGINS`` environment variable (comma-separated module names) or in an entry point
of the ``mmlwf.models`` group; both are imported on the first use of the registry::

    # mypkg/pair.py
    from mmlwf.models.registry import ModelKind, register
    register(ModelKind(name="pair", settings="mypkg.pair:PairSettings", module="mypkg.pair"))

The implementation module provides ``build_model(config: dict) -> flax module``,
``model_config(model) -> dict`` and ``pair_cutoff(model) -> float`` (how far the
message-passing pair list reaches, Å); the module's call signature is that of
:func:`mmlwf.training.losses.model_inputs` (what ``train`` initialises it with).

A module may also define ``init_from_stats(model, variables, stats) -> (variables, note)``:
parameters of a fresh model set from the training statistics (``stats.json``) before the first
step of a new run (PhysNet: its per-element energy shift and scale); see
:meth:`ModelKind.init_from_stats`.

A model with long-range terms (Coulomb, dispersion) also defines
``long_pair_cutoff(model) -> float | None``: None for no second list, a distance (Å) for the
pairs within it, ``math.inf`` for every ordered pair of each molecule. Every batch assembler
(training loader, calculator, prediction, MD, compat) then fills ``batch.long_pairs`` with its
own budget, and :func:`mmlwf.models.common.batch_inputs` passes it to the model as the
keyword inputs ``long_dst``, ``long_src``, ``long_pair_mask``, so that message passing keeps
its short list. A module without the function gets no second list and no such inputs.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, did_you_mean
from ..settings.models import DEFAULT_MODEL as DEFAULT  # the kind without ``model.type``
#: environment variable naming plugin modules (comma-separated) imported on first use
PLUGINS_ENV = "MMLWF_PLUGINS"
#: entry-point group of plugin modules
ENTRY_POINT_GROUP = "mmlwf.models"

Ref = str | Callable[..., Any]  # "module:attribute", or the object itself


def resolve(ref: Ref | type) -> Any:
    """The object a ``"module:attribute"`` reference names (other values as they are)."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ModelKind:
    """One model type.

    ``name``: its ``model.type``. ``settings``: the pydantic declaration of its ``model:``
    section (a :class:`~mmlwf.settings.models.ModelSettings` subclass or its reference).
    ``module``: the implementation module (``build_model``, ``model_config``, ``pair_cutoff``,
    optionally ``long_pair_cutoff``).
    ``forward``: ``f(model, params, batch, **options) -> outputs`` (``energy (B,)`` and
    ``forces (A,3)``, or ``esp``); ``forward_options``: training settings passed to it by name
    (e.g. ``esp_decay_length``). ``predicts_energy``: an energy model (element energies from
    the statistics, the ASE calculator, MD, export). ``dataset_fields``/``dataset_need``:
    fields the training data must have, and how a message names them. ``predict``:
    ``f(trained, dataset, indices, *, batch_size) -> prediction dict``; ``metrics``:
    ``f(prediction dict) -> {name: value}``. ``plots``: the figure files made for a run
    (names of :mod:`mmlwf.analysis.plots` makers) and ``plot_needs`` the prediction keys they
    use. ``exportable``: ``mmlwf export`` supports it. ``parts``: ``(name, pattern)`` of the
    named parts of the model that fine-tuning freezes or resets (:mod:`mmlwf.training.finetune`),
    ``pattern`` a regular expression matched at the start of a parameter's path below
    ``params`` (``"embed/embedding"``); ``heads`` names the output layers. ``element_rows``:
    patterns of the parameters indexed by atomic number on their first axis (an embedding, a
    per-element shift), whose rows of elements new to a fine-tuning run start fresh.
    ``energy_offset``: the pattern of the per-element parameter added to every atom's energy
    (eV), which a fine-tuning run aligns to its target data (``finetune.align_energy``). ``heads_forward``:
    ``f(model, params, batch) -> outputs`` of a model with output heads, each with a leading head
    axis (:func:`mmlwf.models.heads.head_energy_and_forces`); empty: the kind has no shallow
    ensemble (``ensemble.kind: shallow`` is a ConfigError for it).
    """

    name: str
    settings: Ref | type
    module: str
    forward: Ref = ""
    forward_options: tuple[str, ...] = ()
    predicts_energy: bool = True
    dataset_fields: tuple[str, ...] = ()
    dataset_need: str = ""
    predict: Ref = "mmlwf.analysis.predict:predict"
    metrics: Ref = "mmlwf.analysis.evaluate:compute_metrics"
    plots: tuple[str, ...] = ("learning_curves.png",)
    plot_needs: tuple[str, ...] = ()
    exportable: bool = False
    parts: tuple[tuple[str, str], ...] = ()
    element_rows: tuple[str, ...] = ()
    energy_offset: str = ""
    heads_forward: Ref = ""

    # -- the implementation, imported on use
    @property
    def settings_class(self) -> type:
        """The pydantic declaration of the ``model:`` section."""
        return resolve(self.settings)

    @property
    def implementation(self):
        """The implementation module."""
        return importlib.import_module(self.module)

    def build_model(self, config: Mapping):
        """The flax module of ``config`` (the ``model:`` section; ``ValueError`` naming a bad key)."""
        return self.implementation.build_model(dict(config))

    def model_config(self, model) -> dict:
        """The full JSON-ready settings of ``model`` (with ``type``)."""
        return self.implementation.model_config(model)

    def pair_cutoff(self, model) -> float:
        """The distance (Å) the loader's pair list must reach for ``model``."""
        return float(self.implementation.pair_cutoff(model))

    def long_pair_cutoff(self, model) -> float | None:
        """How far the long-range pair list must reach for ``model`` (Å; ``math.inf``: every
        pair of a molecule), or None for no second list (the module defines no
        ``long_pair_cutoff``, or it returns None)."""
        fn = getattr(self.implementation, "long_pair_cutoff", None)
        value = None if fn is None else fn(model)
        return None if value is None else float(value)

    def resolve_settings(self, config: Mapping, facts: Mapping) -> tuple[dict, str | None]:
        """``(config, note)``: the ``model:`` section with settings that depend on the training
        data decided from ``facts`` (:func:`mmlwf.training.data.data_facts`), and a line saying
        how (None when the module has no ``resolve_settings``: ``config`` as given)."""
        fn = getattr(self.implementation, "resolve_settings", None)
        return (dict(config), None) if fn is None else fn(config, facts)

    def init_from_stats(self, model, variables: Mapping, stats: Mapping) -> tuple[Mapping, str | None]:
        """``(variables, note)``: a fresh model's ``variables`` with the parameters its module
        sets from the training statistics (``stats.json``; e.g. PhysNet's energy shift and
        scale) and a line saying how; ``(variables, None)`` when the module has no
        ``init_from_stats``. Training calls it on a new run only (not on resume)."""
        fn = getattr(self.implementation, "init_from_stats", None)
        return (variables, None) if fn is None else fn(model, variables, stats)

    def stored_config(self, config: Mapping) -> dict:
        """A ``model`` section read back from a ``model.json`` or an exported file: settings absent
        from it get the values they had when it was written (the module's ``STORED_DEFAULTS``,
        for defaults that changed since; records written since hold every setting)."""
        return {**getattr(self.implementation, "STORED_DEFAULTS", {}), **config}

    def make_forward(self, model, training=None) -> Callable:
        """``forward(params, batch) -> outputs`` of ``model``; ``training`` (the training
        settings) gives the values of :attr:`forward_options` (without it, the forward's own
        defaults: what prediction uses)."""
        fn = resolve(self.forward) if self.forward else getattr(self.implementation, "forward")
        options = {} if training is None else {k: getattr(training, k) for k in self.forward_options}
        return functools.partial(fn, model, **options)

    def make_heads_forward(self, model) -> Callable:
        """``forward(params, batch) -> outputs`` with a leading head axis of ``model`` built with
        output heads (a shallow ensemble; :attr:`heads_forward`)."""
        if not self.heads_forward:
            raise ConfigError(f"model type {self.name} has no output heads (no shallow ensemble)")
        return functools.partial(resolve(self.heads_forward), model)

    def predictions(self, trained, data, indices=None, *, batch_size: int = 32) -> dict:
        """The prediction dict of a :class:`~mmlwf.inference.TrainedModel` on ``data``."""
        return resolve(self.predict)(trained, data, indices, batch_size=batch_size)

    def compute_metrics(self, pred: Mapping) -> dict:
        """The error metrics of a prediction dict."""
        return resolve(self.metrics)(pred)


_KINDS: dict[str, ModelKind] = {}
_LOCK = threading.RLock()
_PLUGINS_LOADED = False


def register(kind: ModelKind, *, replace: bool = False) -> ModelKind:
    """Add ``kind`` (a name already taken by another kind: ``ValueError`` unless ``replace``)."""
    name = kind.name.lower()
    with _LOCK:
        old = _KINDS.get(name)
        if old is not None and old != kind and not replace:
            raise ValueError(f"model kind {name!r} is already registered")
        _KINDS[name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests)."""
    with _LOCK:
        _KINDS.pop(name.lower(), None)


def load_plugins(*, force: bool = False) -> None:
    """Import the modules of ``$MMLWF_PLUGINS`` and of the ``mmlwf.models`` entry points
    (once per process; ``force`` re-reads the environment variable)."""
    global _PLUGINS_LOADED
    with _LOCK:
        if _PLUGINS_LOADED and not force:
            return
        _PLUGINS_LOADED = True
        names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                raise ConfigError(f"{PLUGINS_ENV}: cannot import model plugin {name!r} ({exc})") from None
        try:
            from importlib.metadata import entry_points

            found = entry_points(group=ENTRY_POINT_GROUP)
        except Exception:  # broken metadata: no plugins from entry points
            found = ()
        for ep in found:
            try:
                ep.load()
            except Exception as exc:
                raise ConfigError(f"entry point {ep.name!r} ({ENTRY_POINT_GROUP}): cannot load {ep.value!r} "
                                  f"({type(exc).__name__}: {exc})") from None


def kinds() -> dict[str, ModelKind]:
    """Every registered kind by name (the built-in ones first)."""
    load_plugins()
    with _LOCK:
        return dict(_KINDS)


def get(name: str | None) -> ModelKind:
    """The kind called ``name`` (any case; None: :data:`DEFAULT`); one-line ``ConfigError`` otherwise."""
    key = DEFAULT if name is None else str(name).lower()
    known = kinds()
    if key not in known:
        raise ConfigError(f"unknown model type {str(name)!r}{did_you_mean(key, known)} (known: {', '.join(known)})")
    return known[key]


def kind_of_config(model: Mapping | None) -> ModelKind:
    """The kind a ``model:`` section (or ``model.json``'s ``model``) names."""
    return get(dict(model or {}).get("type", DEFAULT))


def kind_of_model(model) -> ModelKind | None:
    """The registered kind whose implementation made the flax module ``model`` (None if none)."""
    for kind in kinds().values():
        try:
            impl = kind.implementation
        except ImportError:
            continue
        if type(model).__module__ == impl.__name__:
            return kind
    return None


register(ModelKind(
    name="physnet",
    settings="mmlwf.settings.models:PhysNetSettings",
    module="mmlwf.models.physnet",
    forward="mmlwf.models.physnet:energy_and_forces",
    predicts_energy=True,
    predict="mmlwf.analysis.predict:predict",
    plots=("learning_curves.png", "parity_energy.png", "parity_forces.png", "error_histogram.png",
           "force_errors_by_element.png"),
    plot_needs=("E_ref", "E_pred", "F_ref", "F_pred", "Z"),
    exportable=True,
    parts=(("embedding", r"embed/"),
           ("interaction", r"(message|neighbour|self|gate|update|interaction_residual|atomic_residual)_\d"),
           ("heads", r"output(_residual)?_\d"),
           ("energy_shift_scale", r"energy_(shift|scale)$"),
           ("charge_shift_scale", r"charge_(shift|scale)$"),
           ("dispersion", r"dispersion/")),
    element_rows=(r"embed/", r"(energy|charge)_(shift|scale)$"),
    energy_offset=r"energy_shift$",
    heads_forward="mmlwf.models.heads:head_energy_and_forces",
))
register(ModelKind(
    name="dcmnet",
    settings="mmlwf.settings.models:DCMNetSettings",
    module="mmlwf.models.dcmnet",
    forward="mmlwf.models.dcmnet:forward",
    forward_options=("esp_decay_length",),
    predicts_energy=False,
    dataset_fields=("grid", "esp"),
    dataset_need="an ESP dataset",
    predict="mmlwf.analysis.predict:predict_esp",
    plots=("learning_curves.png", "esp_error.png", "charge_positions.png"),
    plot_needs=("Z", "R", "offsets", "grid", "grid_offsets", "esp_ref", "esp_pred", "dcm_charges", "dcm_positions"),
    exportable=False,
))
