"""Where the Hydra configs live (a one-line error when they cannot be found), composing them with
one-line errors, and one preset read on its own.

Importing this module registers the settings' defaults nodes (``schema/*``,
:mod:`immiscible_policy.config_schema`) with Hydra's ConfigStore: every preset's defaults list starts
with one, so nothing composes ``configs/`` without them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from immiscible_policy import config_schema

ENV = "IMMISCIBLE_CONFIG_DIR"


def config_dir() -> str:
    """``$IMMISCIBLE_CONFIG_DIR`` or the project's ``configs/`` (editable install / source checkout)."""
    candidates = [os.environ.get(ENV)] if os.environ.get(ENV) else []
    candidates.append(str(Path(__file__).resolve().parents[2] / "configs"))
    for c in candidates:
        if (Path(c) / "train.yaml").is_file():
            return str(Path(c).resolve())
    raise SystemExit(
        f"error: Hydra configs not found (looked in {', '.join(candidates)}); install the project with "
        f"`pip install -e .` from its checkout or set {ENV} to its configs/ folder."
    )


def _first_lines(text: str, stop: tuple[str, ...] = ("Config search path", "See https://")) -> list[str]:
    lines = []
    for line in str(text).splitlines():
        if line.strip().startswith(stop):
            break
        if line.strip():
            lines.append(line.strip())
    return lines


def _did_you_mean(overrides: list[str], key: str) -> str:
    """`` (did you mean trainer.epochs?)`` for a key Hydra could not override, from its parent's keys."""
    import difflib

    from hydra import compose
    from omegaconf import DictConfig, OmegaConf

    rest = [o for o in overrides if not o.lstrip("~+").startswith(f"{key}=")]
    try:
        base = compose("train", overrides=rest)
    except Exception:  # another bad override: the message without a suggestion is still right
        return ""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(base, parent) if parent else base
    if not isinstance(node, DictConfig):
        return ""
    near = difflib.get_close_matches(leaf, [str(k) for k in node], n=1, cutoff=0.6)
    if near:
        return f" (did you mean {parent + '.' if parent else ''}{near[0]}?)"
    if not parent and isinstance(base.get("trainer"), DictConfig):  # `epochs=3` for `trainer.epochs=3`
        near = difflib.get_close_matches(leaf, [str(k) for k in base.trainer], n=1, cutoff=0.8)
        return f" (did you mean trainer.{near[0]}?)" if near else ""
    return ""


def _bad_override(overrides: list[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except Exception:
            return o
    return None


def compose_train(overrides: list[str]):
    """The ``train`` config for command-line ``overrides`` (as ``immiscible-train`` would compose it);
    Hydra's multi-line composition errors become one-line ``ValueError``s naming the key and the fix.

    Call inside ``initialize_config_dir(config_dir())``."""
    import re

    from hydra import compose
    from hydra.errors import HydraException, OverrideParseException

    try:
        return compose("train", overrides=list(overrides))
    except OverrideParseException as err:
        bad = _bad_override(list(overrides))
        what = f"cannot parse {bad!r}" if bad else "cannot parse the overrides"
        detail = "; ".join(_first_lines(str(err))) or type(err).__name__
        raise ValueError(
            f"{what} ({detail}); write key=value, quoting values with special characters."
        ) from None
    except HydraException as err:
        text = str(err)
        lines = _first_lines(text)
        m = re.search(r"Could not override '([^']+)'", text)
        if m:
            key = m.group(1)
            given = [o for o in overrides if o.split("=", 1)[0] == key]
            if key in config_schema.uncomposed_keys() and given:
                # a right name on a preset without it: add it, so the family's check says why not
                return compose_train([f"+{o}" if o in given else o for o in overrides])
            raise ValueError(
                f"{key} is not a setting{_did_you_mean(list(overrides), key)}; correct its name (Hydra's "
                f"suggested +{key}=... would add a key that nothing reads)."
            ) from None
        m = re.search(r"Could not find '([^/']+)/([^']+)'", text)
        if m:
            group, name = m.groups()
            options = re.search(rf"Available options in '{re.escape(group)}':\n((?:\t.*\n?)+)", text)
            choices = (
                ", ".join(o.strip() for o in options.group(1).splitlines() if o.strip()) if options else ""
            )
            raise ValueError(
                f"{group}={name}: no such config in {config_dir()}/{group}/"
                + (f"; use one of {choices}." if choices else ".")
            ) from None
        raise ValueError("; ".join(lines) or type(err).__name__) from None


def load_preset(group: str, name: str) -> Any:
    """One preset (``configs/<group>/<name>.yaml``) as Hydra would compose it into ``<group>``: the
    ``schema/*`` defaults it names and the presets it extends, then its own values; for scripts and tests
    that want a model or trainer without composing a whole train config. (``OmegaConf.load`` of a preset
    gives only what it overrides.) Entries that select other groups (``override /model@...``) are not
    this preset's values and are skipped."""
    from omegaconf import OmegaConf

    path = Path(config_dir()) / group / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"{group}={name}: no such config in {config_dir()}/{group}/.")
    own = OmegaConf.load(path)
    entries = list(own.pop("defaults", None) or ["_self_"])
    out = OmegaConf.create({})
    for entry in entries:
        if entry == "_self_":
            out = OmegaConf.merge(out, own)
        elif isinstance(entry, str) and entry.startswith("/schema/"):
            schema, _, package = entry.removeprefix("/schema/").partition("@")
            node = OmegaConf.create(config_schema.schema_node(config_schema.SCHEMAS[schema]))
            if package not in ("", "_here_"):
                node = OmegaConf.create({package: node})
            out = OmegaConf.merge(out, node)
        elif isinstance(entry, str):  # another preset of the same group, extended
            out = OmegaConf.merge(out, load_preset(group, entry))
    return out
