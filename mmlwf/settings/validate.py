"""The workflow config against ``schemas/config.schema.yaml``: defaults filled in, one line per error.

Like Snakemake's ``validate`` (JSON schema 2020-12, the schema's ``default`` values filled in),
but a wrong config gives one line naming the key (``config 'datasets.x.formt': unknown key
(did you mean 'format'?)``) instead of the error with the whole schema. A string that YAML 1.1
leaves unparsed where the schema asks for a number (``1e-3``) is read as that number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

from ..errors import ConfigError, did_you_mean, shown

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string", "number": "a number",
               "integer": "an integer", "boolean": "true or false", "null": "null"}
_BOUNDS = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}


def load_schema(path: str | Path) -> dict:
    """The schema file (YAML or JSON)."""
    return yaml.safe_load(Path(path).read_text())


def with_registered_models(schema: dict) -> dict:
    """``schema`` (the config schema) with its generated ``$defs`` made anew from the
    declarations, so that model kinds registered by plugins (:mod:`mmlwf.models.registry`)
    are accepted too; the file's own for the built-in kinds."""
    from .schema import generated_defs

    if isinstance(schema.get("$defs"), dict) and "model" in schema["$defs"]:
        schema["$defs"].update(generated_defs())
    return schema


def _wants_number(schema: Mapping) -> bool:
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return "number" in kinds or "integer" in kinds


def _yaml11(value: Any, schema: Mapping) -> Any:
    """``value`` as meant where YAML 1.1 misread it: a number string where the schema wants a
    number (``1e-3``), a boolean where it wants ``off``/``on`` (``off`` read as false)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()) and _wants_number(schema):
        number = float(value)
        return int(number) if "integer" in str(schema.get("type")) and number.is_integer() else number
    if isinstance(value, bool) and ("off" if not value else "on") in schema.get("enum", ()):
        return "on" if value else "off"
    return value


def _fill_properties(validator, properties, instance, schema):
    """``properties``, after filling in defaults and reading YAML 1.1 slips as meant."""
    if isinstance(instance, dict):
        for name, sub in properties.items():
            if "default" in sub:
                instance.setdefault(name, sub["default"])
            if name in instance:
                instance[name] = _yaml11(instance[name], sub)
    yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema)


_Validator = validators.extend(Draft202012Validator, {"properties": _fill_properties})


def _where(path) -> str:
    return ".".join(str(p) for p in path)


def _resolved(schema: Any, root: Mapping) -> Mapping:
    """``schema`` with its local ``$ref`` (``#/$defs/x``) followed."""
    for _ in range(8):  # a chain of references, never a loop
        if not (isinstance(schema, Mapping) and str(schema.get("$ref", "")).startswith("#/")):
            break
        node: Any = root
        for part in schema["$ref"][2:].split("/"):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        schema = node
    return schema if isinstance(schema, Mapping) else {}


def one_line(error: ValidationError, root: Mapping | None = None) -> str:
    """The config error as one line: ``config '<key>': <what is wrong>`` (``root``: the whole
    schema, to name the alternatives of a ``oneOf``)."""
    if error.validator == "type" and error.parent is not None and error.parent.validator in ("oneOf", "anyOf"):
        error = error.parent  # "a string or a mapping", not the first alternative
    where, value, kind, rule = _where(error.absolute_path), error.instance, error.validator, error.validator_value
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if kind == "additionalProperties" and rule is False and isinstance(value, Mapping):
        known = list(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extra = [k for k in value if k not in known and not any(re.search(p, str(k)) for p in patterns)] or ["?"]
        key = f"{where}.{extra[0]}" if where else str(extra[0])
        return f"config '{key}': unknown key" + (did_you_mean(extra[0], known) or f" (known: {', '.join(known)})")
    if "propertyNames" in error.relative_schema_path:
        key = f"{where}.{value}" if where else str(value)
        if kind == "enum":
            return f"config '{key}': unknown key{did_you_mean(value, rule)} (known: {', '.join(map(str, rule))})"
        rule_text = schema.get("description") or f"must match {schema.get('pattern')}"
        return f"config '{key}': name {shown(value)} is not allowed: {rule_text}"
    if kind == "required":
        missing = [k for k in rule if k not in value]
        return f"config '{where}': missing key '{missing[0]}'" if where else f"config: missing key '{missing[0]}'"
    if kind == "enum":
        text = f"{shown(value)} is not one of {', '.join(map(str, rule))}{did_you_mean(value, rule)}"
    elif kind == "const":
        text = f"must be {rule!r}, got {shown(value)}"
    elif kind == "type":
        kinds = rule if isinstance(rule, list) else [rule]
        text = f"must be {' or '.join(_TYPE_WORDS.get(k, k) for k in kinds)}, got {shown(value)}"
    elif kind in _BOUNDS:
        text = f"must be {_BOUNDS[kind]} {rule}, got {shown(value)}"
    elif kind in ("minItems", "minLength", "minProperties"):
        text = "must not be empty" if rule == 1 else f"needs at least {rule} entries"
    elif kind in ("maxItems", "maxLength", "maxProperties"):
        text = f"takes at most {rule} entries"
    elif kind in ("oneOf", "anyOf"):
        kinds = [_TYPE_WORDS.get(_resolved(s, root or {}).get("type"), "") for s in rule]
        text = f"must be {' or '.join(k for k in kinds if k) or 'one of the allowed forms'}, got {shown(value)}"
    else:
        text = " ".join(error.message.split())
    return f"config '{where}': {text}" if where else f"config: {text}"


def check_config(config: dict, schema: Mapping) -> None:
    """Validate ``config`` in place against ``schema``, filling in its defaults.

    Raises :class:`ConfigError` with one line for the most relevant error; its ``where`` holds
    the keys down to the bad value.
    """
    error = best_match(_Validator(schema).iter_errors(config))
    if error is not None:
        exc = ConfigError(one_line(error, schema))
        exc.where = tuple(error.absolute_path)  # the keys down to the bad value
        raise exc

