"""Assigner registry: entry-point discovery, ``create``, ``available``, ``register``.

Modelled on Gymnasium's and pytest/pluggy's registries (see docs/architecture.md):

* Strategies are found through the entry-point group ``immiscible_policy.assigners``; names are read
  from package metadata, so listing them imports nothing. A plugin is imported only when created.
* ``create("knn", k=8)``; ``create("some.module:Class", ...)`` works without registration.
* An unknown name fails with one line: a "did you mean" suggestion and the available names.
* A plugin whose import fails is listed with its error and fails only when selected (error chained).
* Two distributions claiming one name: creating it raises an error naming both (never a silent overwrite).
* ``IMMISCIBLE_DISABLE_PLUGINS=1`` keeps only this package's built-ins.
* A plugin that ends the process at import (``sys.exit``, ``os._exit``) is reported, never obeyed.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from immiscible_policy.assigners.base import SCOPES, Assigner
from immiscible_policy.pairing_schedule import SCHEDULE_KEYS

GROUP = "immiscible_policy.assigners"
BUILTIN_DIST = "immiscible-policy"
DISABLE_ENV = "IMMISCIBLE_DISABLE_PLUGINS"


class AssignerError(ValueError):
    """Base of the registry's one-line errors."""


class UnknownAssignerError(AssignerError):
    pass


class DuplicateAssignerError(AssignerError):
    pass


class AssignerImportError(AssignerError):
    pass


@dataclass
class AssignerEntry:
    """Where a name comes from. ``target`` is "module:attr"; ``cls`` is set for in-process registrations."""

    name: str
    target: str
    origin: str
    version: str
    cls: type | None = None
    conflict: str | None = None

    @property
    def error(self) -> str | None:
        """Why this entry cannot be created (import failure or name conflict), without importing twice."""
        if self.conflict:
            return self.conflict
        try:
            load(self)
        except AssignerError as exc:
            return str(exc)
        return None


_LOCAL: dict[str, AssignerEntry] = {}
_EP_CACHE: dict[str, AssignerEntry] | None = None
_LOADED: dict[str, type] = {}


def _canonical(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-")


def _scan_entry_points() -> dict[str, AssignerEntry]:
    found: dict[str, AssignerEntry] = {}
    only_builtin = os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes")
    for ep in metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        version = ep.dist.version if ep.dist is not None else "?"
        if only_builtin and _canonical(dist) != BUILTIN_DIST:
            continue
        entry = AssignerEntry(ep.name, ep.value, dist, version)
        prev = found.get(ep.name)
        if prev is None:
            found[ep.name] = entry
        elif _canonical(prev.origin) != _canonical(dist):
            prev.conflict = (
                f"Assigner name '{ep.name}' is claimed by two distributions: {prev.origin} {prev.version} "
                f"({prev.target}) and {dist} {version} ({ep.value}); uninstall one of them, or select one "
                f"explicitly with its 'module:Class' path."
            )
    return found


def _entries() -> dict[str, AssignerEntry]:
    global _EP_CACHE
    if _EP_CACHE is None:
        _EP_CACHE = _scan_entry_points()
    merged = dict(_EP_CACHE)
    merged.update(_LOCAL)
    return merged


def refresh() -> None:
    """Forget cached entry points (after installing a plugin in a running process, or changing the env var)."""
    global _EP_CACHE
    _EP_CACHE = None
    _LOADED.clear()


def available() -> dict[str, AssignerEntry]:
    """All known names -> their entry (origin distribution, version); imports nothing."""
    return dict(sorted(_entries().items()))


def register(name: str | None = None) -> Callable[[type], type]:
    """Class decorator registering an in-process strategy (tests, notebooks).

    Raises if the name is already taken by an entry point or another registration.
    """

    def deco(cls: type) -> type:
        key = name or getattr(cls, "name", "") or cls.__name__
        existing = _entries().get(key)
        if existing is not None and existing.cls is not cls:
            raise DuplicateAssignerError(
                f"Assigner name '{key}' is already provided by {existing.origin} ({existing.target}); "
                f"choose another name for {cls.__module__}.{cls.__qualname__}."
            )
        _validate_class(cls, key)
        if not getattr(cls, "name", ""):
            cls.name = key
        _LOCAL[key] = AssignerEntry(key, f"{cls.__module__}:{cls.__qualname__}", "<in-process>", "", cls=cls)
        return cls

    return deco


def unregister(name: str) -> None:
    """Remove an in-process registration (for tests)."""
    _LOCAL.pop(name, None)


def _validate_class(cls: Any, label: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Assigner)):
        raise AssignerError(
            f"'{label}' resolves to {cls!r}, which is not a subclass of immiscible_policy.assigners.Assigner."
        )
    if cls.scope not in SCOPES:
        raise AssignerError(f"Assigner '{label}' declares scope={cls.scope!r}; use one of {SCOPES}.")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


class PluginExitError(RuntimeError):
    """A plugin called ``os._exit`` while being imported (see :func:`_no_os_exit`)."""


@contextmanager
def _no_os_exit() -> Iterator[None]:
    """While a plugin is imported, ``os._exit`` in this process and thread raises instead of ending it.

    Why: ``sys.exit`` at import is an exception we catch, but ``os._exit(0)`` ends the process at once,
    with status 0 and no output: ``immiscible-assigners`` printed nothing, and training would stop
    without a word. Catching it here costs nothing (no subprocess per plugin); a call from another
    thread or a forked child (whose end calls ``os._exit``) still exits as usual."""
    real, pid, thread = os._exit, os.getpid(), threading.get_ident()

    def refuse(status: int) -> None:
        if os.getpid() != pid or threading.get_ident() != thread:
            real(status)
        raise PluginExitError(f"called os._exit({status}) while being imported")

    os._exit = refuse
    try:
        yield
    finally:
        os._exit = real


def _import_target(target: str, label: str) -> type:
    module_name, _, attr = target.partition(":")
    try:
        with _no_os_exit():
            obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a plugin calling sys.exit() on import must not end the host program
        raise AssignerImportError(
            f"Assigner '{label}' ({target}) failed to import: {_one_line(exc)}"
        ) from exc
    _validate_class(obj, label)
    return obj


def load(entry: AssignerEntry) -> type:
    """Import (once) and return the class behind an entry."""
    if entry.cls is not None:
        return entry.cls
    if entry.conflict:
        raise DuplicateAssignerError(entry.conflict)
    key = f"{entry.origin}|{entry.target}"
    if key not in _LOADED:
        try:
            _LOADED[key] = _import_target(entry.target, entry.name)
        except AssignerImportError as exc:
            raise AssignerImportError(f"{exc} [from {entry.origin} {entry.version}]") from exc.__cause__
    return _LOADED[key]


def get_class(name: str) -> type:
    """The class for a registered name or a 'module:Class' path."""
    if not isinstance(name, str) or not name:
        raise UnknownAssignerError(f"Assigner name must be a non-empty string, got {name!r}.")
    entries = _entries()
    if name in entries:
        return load(entries[name])
    if ":" in name:
        return _import_target(name, name)
    names = sorted(entries)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownAssignerError(
        f"Unknown assigner '{name}'.{hint} Available: {', '.join(names) or '(none)'}. "
        "A strategy not registered can be given as 'module.path:ClassName'."
    )


def _describe_options(cls: type) -> str:
    """``k: int = 4, space: str = 'full'`` from the constructor signature (what ``create`` accepts)."""
    try:
        params = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return ", ".join(cls.option_names()) or "(none)"
    out = []
    for p in params:
        if p.name == "self" or p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        text = p.name
        if p.annotation is not p.empty:
            ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
            text += f": {ann}" if ann else ""
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        out.append(text)
    return ", ".join(out) or "(none)"


def create(name: str, **params: Any) -> Assigner:
    """Instantiate a strategy by registered name or 'module:Class' path with its options."""
    cls = get_class(name)
    accepted = cls.option_names()
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise AssignerError(
            f"Assigner '{name}' got unknown option(s) {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(accepted) or '(none)'}."
        )
    try:
        instance = cls(**params)
    except AssignerError:
        raise
    except (TypeError, ValueError) as exc:  # e.g. int("abc"): say which strategy and which options
        given = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "no options"
        raise AssignerError(
            f"Assigner '{name}' rejected its options ({given}): {_one_line(exc).rstrip('.')}; "
            f"its options are: {_describe_options(cls)}."
        ) from exc
    if ":" in name and not getattr(instance, "name", ""):
        type(instance).name = name
    return instance


def create_from_config(cfg: Any) -> Assigner:
    """Build from ``{"name": ..., "params": {...}}`` (a dict or an OmegaConf node), as saved in checkpoints.

    The pairing schedule's keys (``start_epoch``, ``fraction``, ``ramp_epochs``) may sit beside them: the
    noising core reads those (:class:`~immiscible_policy.pairing_schedule.PairingSchedule`), not the strategy.
    """
    if hasattr(cfg, "items") and not isinstance(cfg, dict):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise AssignerError(f"Assigner config needs a 'name' key (and optional 'params'), got {cfg!r}.")
    extra = set(cfg) - {"name", "params", *SCHEDULE_KEYS}
    if extra:
        raise AssignerError(
            f"Assigner config has unknown key(s) {sorted(extra)}; put strategy options under 'params' "
            f"(the pairing schedule's keys beside them: {', '.join(SCHEDULE_KEYS)})."
        )
    return create(cfg["name"], **dict(cfg.get("params") or {}))


def origin_of(assigner: Assigner) -> dict[str, str | None]:
    """``{"distribution", "version"}`` that provides ``assigner``'s registered name (None when the
    name is not registered, e.g. a ``module:Class`` path); recorded in checkpoints next to its config."""
    entry = _entries().get(assigner.name)
    if entry is None:
        return {"distribution": None, "version": None}
    return {"distribution": entry.origin, "version": entry.version}
