"""How one setting is declared and checked: :func:`setting` on a dataclass field, the :class:`Rule` it
carries, and :func:`check_value` / :func:`check_section`, which turn a bad value into the one-line error
``immiscible-train`` prints. The package docstring (``immiscible_policy.config_schema``) says why."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

MISSING = "???"  # OmegaConf's and Hydra's mark of a value a preset or the command line must set

# diffusers' get_scheduler names that need nothing beyond warm-up and total steps
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")
RESUME_CHOICES = "false | true | auto"
KINDS = ("policy", "image")


# ------------------------------------------------------------------------------------------------ fields


@dataclass(frozen=True)
class Rule:
    """How one setting is checked; built by :func:`setting`, completed from the field's annotation by
    :func:`rules_of` (``kind``, ``null``). ``kind``: int, num, bool, str, choice, device, ints, strs,
    betas, section, group, any."""

    doc: str
    kind: str | None = None
    example: Any = None
    lo: float | None = None
    hi: float | None = None
    above: bool = False
    null: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()
    note: str = ""  # what null / 0 means, appended to range messages
    check: Callable[[str, Any], None] | None = None  # a further check of a value of the right type
    composed: bool = True  # in the preset's defaults node; False: only some families have the key
    section: type | None = None  # the dataclass of a nested section


def setting(
    default: Any = MISSING,
    doc: str = "",
    *,
    kind: str | None = None,
    example: Any = None,
    lo: float | None = None,
    hi: float | None = None,
    above: bool = False,
    optional: bool = False,
    choices: tuple[str, ...] = (),
    note: str = "",
    check: Callable[[str, Any], None] | None = None,
    composed: bool = True,
) -> Any:
    """A dataclass field with its default (``MISSING``: a preset must set it) and its :class:`Rule`."""
    rule = Rule(doc, kind, example, lo, hi, above, False, optional, tuple(choices), note, check, composed)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def section(
    cls: type, doc: str, *, default: Any = dataclasses.MISSING, optional: bool = False, composed: bool = True
) -> Any:
    """A nested section (``trainer.fid``): its own dataclass, its defaults by default, or ``default``
    (``None``: absent unless a preset adds it, as ``model.vision``: ``composed=False``)."""
    rule = Rule(doc, "section", optional=optional, section=cls, composed=composed)
    if default is dataclasses.MISSING:
        return field(default_factory=cls, metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def redefault(base: type, name: str, default: Any) -> Any:
    """``base``'s field ``name`` with another default (the image trainer's ``lr``), its rule kept, so a
    subclass restates the value only, never the range or the meaning."""
    rule = base.__dataclass_fields__[name].metadata["rule"]
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def _kind_of(tp: Any) -> tuple[str, bool, type | None]:
    """(kind, null allowed, section dataclass) of an annotation."""
    null = False
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        null = len(args) < len(get_args(tp))
        tp = args[0] if len(args) == 1 else Any
    if dataclasses.is_dataclass(tp):
        return "section", null, tp
    if get_origin(tp) is list:
        item = get_args(tp)[0] if get_args(tp) else Any
        return {int: "ints", str: "strs", float: "betas"}.get(item, "any"), null, None
    return {bool: "bool", int: "int", float: "num", str: "str"}.get(tp, "any"), null, None


@functools.cache
def rules_of(cls: type) -> dict[str, Rule]:
    """``{field name: Rule}`` of a schema dataclass, the kind and null-ness read from the annotations."""
    hints = get_type_hints(cls)
    out: dict[str, Rule] = {}
    for f in dataclasses.fields(cls):
        rule: Rule = f.metadata["rule"]
        kind, null, sub = _kind_of(hints[f.name])
        kind = rule.kind or ("choice" if rule.choices else kind)
        default = _default(f)
        example = rule.example
        if example is None:
            example = True if kind == "bool" else None if default in (None, MISSING) else default
        out[f.name] = dataclasses.replace(
            rule, kind=kind, null=null, example=example, section=rule.section or sub
        )
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def defaults_of(cls: type) -> dict[str, Any]:
    """Every field's default as plain data (nested sections as dicts; ``MISSING`` as ``???``)."""
    out = {}
    for f in dataclasses.fields(cls):
        value = _default(f)
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def schema_node(cls: type) -> dict[str, Any]:
    """What a preset composes first (registered as ``schema/<name>``): the defaults of every field
    that every family of the group has (``composed``), sections included."""
    rules = rules_of(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        rule = rules[f.name]
        if not rule.composed or rule.kind == "group":
            continue
        value = _default(f)
        out[f.name] = schema_node(type(value)) if dataclasses.is_dataclass(value) else value
    return out


# ------------------------------------------------------------------------------------------------ values


def show(value: Any) -> str:
    """A value as it would be written on the command line (``null``, ``true``, ``[1, 2]``, ``abc``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, list | tuple | Mapping):
        return json.dumps(value)
    return str(value)


def _describe(rule: Rule) -> str:
    kind = rule.kind
    if kind in ("int", "num"):
        noun = "an integer" if kind == "int" else "a number"
        if rule.lo is not None:
            noun += f" {'>' if rule.above else '>='} {show(rule.lo)}"
        if rule.hi is not None:
            noun += f" and < {show(rule.hi)}"
    elif kind == "bool":
        noun = "true or false"
    elif kind == "choice":
        noun = "one of " + ", ".join(rule.choices)
    elif kind == "device":
        noun = "auto, cpu, cuda, cuda:N or mps"
    elif kind == "ints":
        noun = f"a non-empty list of integers >= {show(rule.lo)}"
    elif kind == "strs":
        noun = "a non-empty list of names"
    elif kind == "betas":
        noun = "two numbers in [0, 1)"
    else:
        noun = "a string"
    extras = [rule.note] if rule.note else []
    if rule.null and not rule.note:
        extras.append("or null")
    return noun + (f" ({'; '.join(extras)})" if extras else "")


def bad_value(key: str, value: Any, problem: str, rule: Rule) -> ValueError:
    """The one-line error of a setting: ``key=value problem; use what, e.g. key=example.``"""
    return ValueError(
        f"{key}={show(value)} {problem}; use {_describe(rule)}, e.g. {key}={show(rule.example)}."
    )


def _as_number(value: Any) -> float | None:
    """int/float, or a numeric string (``1e-4`` that YAML 1.1 reads as a string); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_value(key: str, value: Any, rule: Rule) -> None:
    """One setting against its rule; a one-line ``ValueError`` naming ``key`` when it does not fit."""
    if value is None:
        if rule.null:
            return
        raise bad_value(key, value, "is not allowed", rule)
    kind = rule.kind
    if kind in ("int", "num"):
        number = _as_number(value)
        if number is None or not math.isfinite(number):
            raise bad_value(key, value, "is not a number", rule)
        if kind == "int" and (not float(number).is_integer() or isinstance(value, str)):
            raise bad_value(key, value, "is not an integer", rule)
        low = rule.lo is not None and (number <= rule.lo if rule.above else number < rule.lo)
        if low or (rule.hi is not None and number >= rule.hi):
            raise bad_value(key, value, "is out of range", rule)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad_value(key, value, "is not true/false", rule)
    elif kind == "choice":
        choices = rule.choices
        if not isinstance(value, str) or value not in choices:
            near = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise bad_value(key, value, f"is not supported{hint}", rule)
    elif kind == "device":
        if not isinstance(value, str) or not _DEVICE.match(value):
            raise bad_value(key, value, "is not a device", rule)
    elif kind == "str":
        if not isinstance(value, str) or not value:
            raise bad_value(key, value, "is not a string", rule)
    elif kind in ("ints", "strs"):
        if not isinstance(value, list | tuple) or not value:
            raise bad_value(key, value, "is not a non-empty list", rule)
        for item in value:
            ok = (
                isinstance(item, int) and not isinstance(item, bool) and item >= (rule.lo or 0)
                if kind == "ints"
                else isinstance(item, str) and bool(item)
            )
            if not ok:
                raise bad_value(key, value, f"holds {show(item)}", rule)
    elif kind == "betas":
        numbers = [_as_number(v) for v in value] if isinstance(value, list | tuple) else []
        if len(numbers) != 2 or any(b is None or not 0 <= b < 1 for b in numbers):
            raise bad_value(key, value, "is not two numbers in [0, 1)", rule)
    if rule.check is not None:
        rule.check(key, value)


def suggest(name: str, candidates: list[str], cutoff: float = 0.6) -> str | None:
    near = difflib.get_close_matches(name, candidates, n=1, cutoff=cutoff)
    return near[0] if near else None


def required(cls: type) -> set[str]:
    """The fields a config of ``cls`` must hold (not ``optional``)."""
    return {k for k, r in rules_of(cls).items() if not r.optional}


def check_section(
    prefix: str,
    values: Mapping[str, Any],
    cls: type,
    *,
    fix_missing: str = "",
    strict: bool | None = None,
    also_known: tuple[str, ...] = (),
) -> None:
    """Unknown keys (did-you-mean), missing required keys and every value of one config section, its
    nested sections included. ``strict`` (default: the class's ``open`` flag negated) refuses keys that
    are not fields; ``also_known`` are keys checked elsewhere (a setting's former name)."""
    what = cls.what
    strict = (not cls.open) if strict is None else strict
    rules = rules_of(cls)
    if strict:
        for key in values:
            if key in rules or key in also_known:
                continue
            near = suggest(str(key), list(rules))
            hint = f"did you mean {prefix}.{near}?" if near else f"its settings are {', '.join(rules)}"
            raise ValueError(
                f"{prefix}.{key} is not a setting of {what} ({hint}); remove it or correct its name "
                f"(a key added with +{prefix}.{key}=... is never read)."
            )
    for key, rule in rules.items():
        if key not in values:
            if rule.optional:
                continue
            raise ValueError(f"{prefix}.{key} is missing: {what} needs it{fix_missing}.")
        value = values[key]
        if rule.kind == "section":
            if value is None and rule.null:
                continue
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"{prefix}.{key}={show(value)} is not a section; set its keys "
                    f"({', '.join(rules_of(rule.section))}), e.g. {prefix}.{key}.{next(iter(rules_of(rule.section)))}=..."
                )
            check_section(f"{prefix}.{key}", value, rule.section, fix_missing=fix_missing, strict=strict)
        elif rule.kind != "group":
            check_value(f"{prefix}.{key}", value, rule)
