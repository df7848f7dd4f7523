"""Canonical field names and the aliases under which sources store them."""

from __future__ import annotations

from typing import Iterable, Mapping

from ..errors import ConfigError

#: canonical name -> aliases tried in order (case-sensitive first, then case-insensitive)
ALIASES: dict[str, tuple[str, ...]] = {
    "R": ("R", "positions", "coordinates", "coords", "xyz", "pos"),
    "Z": ("Z", "z", "atomic_numbers", "numbers", "species"),
    "N": ("N", "n_atoms", "num_atoms", "natoms"),
    "E": ("E", "energy", "energies", "total_energy", "U"),
    "F": ("F", "forces", "force"),
    "D": ("D", "dipole", "dipoles", "Dxyz", "dipole_moment"),
    "Qtot": ("Qtot", "Q", "charge", "total_charge"),
    "q": ("mono", "q", "atomic_charges", "charges", "partial_charges"),
}
CANONICAL_KEYS = tuple(ALIASES)
#: the source name that drops an optional field (``--key D=none``, ``keys: {D: none}``)
DROP = "none"
#: fields every structure needs: they cannot be dropped
_REQUIRED = ("R", "Z")


def parse_key_map(items: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Parse ``canonical=source`` strings (``--key E=energy_wb97x``) into a dict; the source
    name ``none`` drops an optional field (``--key D=none``)."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        pairs = []
        for item in items:
            if "=" not in item:
                raise ConfigError(f"--key '{item}': expected canonical=source, e.g. E=energy")
            k, v = item.split("=", 1)
            pairs.append((k.strip(), v.strip()))
    out = {}
    for k, v in pairs:
        if k not in ALIASES:
            raise ConfigError(f"--key '{k}={v}': unknown canonical name '{k}' (known: {', '.join(ALIASES)})")
        if not v:
            raise ConfigError(f"--key '{k}=': empty source name")
        if v == DROP and k in _REQUIRED:
            raise ConfigError(f"--key '{k}={v}': {k} is required and cannot be dropped")
        out[k] = v
    return out


def resolve(available: Iterable[str], canonical: str, keys: Mapping[str, str]) -> str | None:
    """The source name holding ``canonical``: the user's key map first, then the aliases
    (None when absent or dropped with ``none``)."""
    names = list(available)
    if keys.get(canonical) == DROP:
        return None
    if canonical in keys:
        return keys[canonical] if keys[canonical] in names else None
    for alias in ALIASES[canonical]:
        if alias in names:
            return alias
    lower = {n.lower(): n for n in names}
    for alias in ALIASES[canonical]:
        if len(alias) > 1 and alias.lower() in lower:  # 'Q' must not match atomic 'q'
            return lower[alias.lower()]
    return None
