"""The mechanism: a section of settings is a :class:`Settings` subclass, one field per setting.

Each field is declared once, ``name: type = Field(default, description=..., ge=/gt=/le=/lt=)``
(choices as ``Literal[...]``); rules between fields are ``model_validator(mode="after")``
methods raising :class:`SettingError`. Everything else is derived from that declaration:
:func:`parse` (the checked values, or one line naming the bad key), :func:`describe` (a text
table), :func:`bounds_text`, and the JSON-schema parts of :mod:`mmlwf.settings.schema`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from ..errors import ConfigError, did_you_mean, shown

S = TypeVar("S", bound="Settings")

#: names of datasets, experiments, ... become path components: no separators, no leading dot
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"


class _NameMarker:
    """Marks :data:`Name` for the schema (``$ref: "#/$defs/name"``)."""


#: a name (of a dataset, an experiment, ...): a string matching :data:`NAME_PATTERN`
Name = Annotated[str, Field(pattern=f"^{NAME_PATTERN}$"), _NameMarker()]


def optional(description: str, extra: Mapping[str, Any] | None = None) -> Any:
    """A setting without a default: left out of the config when not given (``None`` when parsed),
    so the schema states neither a default nor ``null``."""
    return Field(None, description=description, json_schema_extra={**(extra or {}), "fill": False})


def fills(field: FieldInfo) -> bool:
    """Whether the workflow fills in ``field``'s default when the config lacks it."""
    return not field.is_required() and (field.json_schema_extra or {}).get("fill", True) is not False


class SettingError(ConfigError):
    """A bad setting: ``key`` (dotted, inside its section) and what is wrong with it; for an
    unknown key, ``known`` holds the keys of its section."""

    def __init__(self, key: str, problem: str, known: tuple[str, ...] | None = None) -> None:
        self.key, self.problem, self.known = key, " ".join(str(problem).split()), known
        super().__init__(f"{key}: {self.problem}" if key else self.problem)


class Settings(BaseModel):
    """Base of every declared section: unknown keys refused, values frozen, numbers finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans(cls, value: Any, info) -> Any:
        """``true`` is not the number 1 (pydantic's lax mode would take it); where ``off``/``on``
        is a choice, a boolean is that word (YAML 1.1 reads ``off`` as false)."""
        if not isinstance(value, bool):
            return value
        field = cls.model_fields[info.field_name]
        types = _types(field)
        if bool not in types and (int in types or float in types):
            raise PydanticCustomError("number_type", "must be a number" if float in types else "must be an integer")
        word = "on" if value else "off"
        return word if word in choices(field) else value


def _types(field: FieldInfo) -> tuple:
    """The types a field's annotation allows (the members of a union)."""
    ann = field.annotation
    return get_args(ann) if get_origin(ann) in (Union, UnionType) else (ann,)


def choices(field: FieldInfo) -> tuple:
    """The allowed values of a ``Literal`` field (``()`` for other fields)."""
    for t in _types(field):
        if get_origin(t) is Literal:
            return get_args(t)
    return ()


def bounds_text(field: FieldInfo) -> str:
    """The declared bounds as text: ``>= 1``, ``in [0, 1)``, or ``""``."""
    low = high = None
    for m in field.metadata:
        for attr, text in (("gt", "("), ("ge", "[")):
            if getattr(m, attr, None) is not None:
                low = (text, getattr(m, attr))
        for attr, text in (("lt", ")"), ("le", "]")):
            if getattr(m, attr, None) is not None:
                high = (text, getattr(m, attr))
    if low and high:
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'>' if low[0] == '(' else '>='} {low[1]:g}"
    if high:
        return f"{'<' if high[0] == ')' else '<='} {high[1]:g}"
    return ""


def _error(cls: type[Settings], err: dict) -> SettingError:
    """The :class:`SettingError` of one pydantic error dict."""
    if err["type"] == "value_error" and isinstance((err.get("ctx") or {}).get("error"), SettingError):
        return err["ctx"]["error"]
    if err["type"] == "extra_forbidden":
        key, known = str(err["loc"][0]), tuple(cls.model_fields)
        return SettingError(key, "unknown key" + (did_you_mean(key, known) or f" (known: {', '.join(known)})"),
                            known)
    return SettingError(*_problem(cls, err))


def _problem(cls: type[Settings], err: dict) -> tuple[str, str]:
    """(key, problem) of one pydantic error dict about a value."""
    key = ".".join(str(p) for p in err["loc"])
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    field = cls.model_fields.get(str(err["loc"][0])) if err["loc"] else None
    if kind == "literal_error" and field is not None:
        known = choices(field)
        return key, f"{shown(value)} is not one of {', '.join(map(str, known))}{did_you_mean(value, known)}"
    bound = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}
    if value is None and kind.endswith("_type"):
        return key, "must not be null"
    if kind in bound:
        op = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}[bound[kind]]
        text = f"must be {op} {ctx[bound[kind]]:g}"
    elif kind.startswith("int_"):
        text = "must be an integer"
    elif kind.startswith("float_"):
        text = "must be a number"
    elif kind == "finite_number":
        text = "must be finite"
    elif kind.startswith("bool_"):
        text = "must be true or false"
    elif kind.startswith("string_"):
        text = "must be a string"
    else:
        text = err["msg"][:1].lower() + err["msg"][1:]
    return key, f"{text}, got {shown(value)}"


def parse(cls: type[S], values: Mapping[str, Any] | None) -> S:
    """The checked settings of ``cls`` from ``values`` (missing keys take their defaults).

    Raises :class:`SettingError` for the first bad key (an unknown key before a bad value).
    """
    if values is not None and not isinstance(values, Mapping):
        raise SettingError("", f"must be a mapping of settings, got {shown(values)}")
    try:
        return cls.model_validate(dict(values or {}))
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise _error(cls, errors[0]) from None


def help_text(field: FieldInfo) -> str:
    """A field's description with its bounds or choices."""
    extra = bounds_text(field) or " | ".join(map(str, choices(field)))
    return f"{field.description}" + (f" ({extra})" if extra else "")


def describe(cls: type[Settings], section: str) -> str:
    """A text table of the settings of ``cls``: name, default, meaning (with bounds)."""
    rows = []
    for name, f in cls.model_fields.items():
        default = ("(required)" if f.is_required() else "(section)" if isinstance(f.default, Settings)
                   else "null" if f.default is None else f.default)
        rows.append(f"  {name:<24} {default!s:<14} {help_text(f)}")
    return f"{section}:\n" + "\n".join(rows)


def defaults(cls: type[Settings]) -> dict[str, Any]:
    """``{name: default}`` of every setting of ``cls``."""
    return {name: f.default for name, f in cls.model_fields.items()}


def default_value(field: FieldInfo) -> Any:
    """``field``'s default as plain data (a section's default as ``{}``, its keys filled in later)."""
    value = field.get_default(call_default_factory=True)
    return {} if isinstance(value, Settings) else copy.deepcopy(value)


def _sections_in(annotation: Any) -> tuple[str, tuple[type[Settings], ...]]:
    """(``"one"`` or ``"each"``, the :class:`Settings` classes) that an annotation holds: a section
    itself (or in a union), or the values of a mapping of sections."""
    if get_origin(annotation) is dict:
        return "each", _sections_in(get_args(annotation)[1])[1]
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return "one", tuple(m for m in members if isinstance(m, type) and issubclass(m, Settings))


def fill_defaults(cls: type[Settings], values: Any) -> Any:
    """``values`` (a config mapping, changed in place) with the defaults of ``cls`` filled in where
    keys are missing, in nested sections too (what the schema's ``default`` values do). Values of
    the wrong kind are left alone for the checks to name."""
    if not isinstance(values, dict):
        return values
    for name, field in cls.model_fields.items():
        if name not in values and fills(field):
            values[name] = default_value(field)
        if name not in values or "schema" in (field.json_schema_extra or {}):
            continue  # a section kept as written (an experiment's model and training)
        how, sections = _sections_in(field.annotation)
        targets = values[name].values() if how == "each" and isinstance(values[name], dict) else [values[name]]
        for target in targets:
            for section in sections[:1]:
                fill_defaults(section, target)
    return values
