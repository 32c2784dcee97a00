"""Plugin registries: entry-point discovery, ``create``, ``available``, ``register``.

One :class:`Registry` per kind of plugin (assigners here, objectives in
:mod:`immiscible_policy.objectives.registry`), so the rules below hold for every kind by construction
instead of by copy. Modelled on Gymnasium's and pytest/pluggy's registries (see docs/architecture.md):

* Plugins are found through an entry-point group (``immiscible_policy.assigners``,
  ``immiscible_policy.objectives``); names are read from package metadata, so listing them imports
  nothing. A plugin is imported only when created.
* ``create("knn", k=8)``; ``create("some.module:Class", ...)`` works without registration.
* An unknown name fails with one line: a "did you mean" suggestion and the available names.
* A plugin whose import fails is listed with its error and fails only when selected (error chained).
* Two distributions claiming one name: creating it raises an error naming both (never a silent overwrite).
* ``IMMISCIBLE_DISABLE_PLUGINS=1`` keeps only this package's built-ins.
* A plugin that ends the process at import (``sys.exit``, ``os._exit``) is reported, never obeyed.

The module-level functions (``create``, ``available``, ``register``, ...) are the assigners' registry,
as they were before objectives had one; :func:`refresh` forgets every kind's cache.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, NamedTuple

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


class RegistryErrors(NamedTuple):
    """The exception classes a registry raises, so each kind keeps its own (``except AssignerError``
    never catches an objective's error, and the reverse)."""

    base: type[ValueError]
    unknown: type[ValueError]
    duplicate: type[ValueError]
    import_: type[ValueError]


@dataclass
class Entry:
    """Where a name comes from. ``target`` is "module:attr"; ``cls`` is set for in-process registrations;
    ``registry`` is the registry that listed it (the assigners' when None, as entries made by hand)."""

    name: str
    target: str
    origin: str
    version: str
    cls: type | None = None
    conflict: str | None = None
    registry: Registry | None = field(default=None, repr=False, compare=False)

    @property
    def error(self) -> str | None:
        """Why this entry cannot be created (import failure or name conflict), without importing twice."""
        if self.conflict:
            return self.conflict
        owner = self.registry or ASSIGNERS
        try:
            owner.load(self)
        except owner.errors.base as exc:
            return str(exc)
        return None


#: the assigners' entry (its name before the registry served other kinds)
AssignerEntry = Entry


def _canonical(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-")


def plugins_disabled() -> bool:
    """``IMMISCIBLE_DISABLE_PLUGINS`` is set: only this package's built-ins are listed, of every kind."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes")


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (at most 300 characters of message): how plugin errors are shown."""
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


class Registry:
    """The names of one kind of plugin: entry points of ``group``, in-process registrations, imports.

    Args:
        group: the entry-point group its distributions declare names in.
        kind: what one plugin is called in messages (``assigner``, ``objective``).
        base: the class every plugin must subclass (checked when it is loaded or registered).
        base_path: how messages name ``base`` (where a plugin author imports it from).
        errors: the exception classes it raises (:class:`RegistryErrors`).
        unregistered_hint: the last sentence of the unknown-name error (how to give an unregistered one).
        check: extra checks of a loaded class (``check(cls, label)``), e.g. the assigners' scope.

    Why a class: the assigners' rules (metadata-only listing, lazy import, did-you-mean, collisions
    naming both distributions, broken plugins failing only when selected, ``module:Class``, the opt-out)
    are the project's plugin contract; every kind gets them from this one implementation.
    """

    instances: ClassVar[list[Registry]] = []

    def __init__(
        self,
        group: str,
        kind: str,
        base: type,
        base_path: str,
        errors: RegistryErrors,
        unregistered_hint: str,
        check: Callable[[type, str], None] | None = None,
    ) -> None:
        self.group, self.kind, self.title = group, kind, kind[:1].upper() + kind[1:]
        self.base, self.base_path, self.errors = base, base_path, errors
        self.unregistered_hint, self.check = unregistered_hint, check
        self.local: dict[str, Entry] = {}
        self._ep_cache: dict[str, Entry] | None = None
        self._loaded: dict[str, type] = {}
        Registry.instances.append(self)

    # ------------------------------------------------------------------------------------ discovery
    def _scan_entry_points(self) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        only_builtin = plugins_disabled()
        for ep in metadata.entry_points(group=self.group):
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            version = ep.dist.version if ep.dist is not None else "?"
            if only_builtin and _canonical(dist) != BUILTIN_DIST:
                continue
            entry = Entry(ep.name, ep.value, dist, version, registry=self)
            prev = found.get(ep.name)
            if prev is None:
                found[ep.name] = entry
            elif _canonical(prev.origin) != _canonical(dist):
                prev.conflict = (
                    f"{self.title} name '{ep.name}' is claimed by two distributions: {prev.origin} "
                    f"{prev.version} ({prev.target}) and {dist} {version} ({ep.value}); uninstall one of "
                    f"them, or select one explicitly with its 'module:Class' path."
                )
        return found

    def entries(self) -> dict[str, Entry]:
        """Entry points merged with in-process registrations (those win: :meth:`register` refuses a
        name an entry point already holds, so they never shadow one)."""
        if self._ep_cache is None:
            self._ep_cache = self._scan_entry_points()
        merged = dict(self._ep_cache)
        merged.update(self.local)
        return merged

    def refresh(self) -> None:
        """Forget cached entry points and loaded classes."""
        self._ep_cache = None
        self._loaded.clear()

    def available(self) -> dict[str, Entry]:
        """All known names -> their entry (origin distribution, version); imports nothing."""
        return dict(sorted(self.entries().items()))

    # ------------------------------------------------------------------------ in-process registration
    def register(self, name: str | None = None) -> Callable[[type], type]:
        """Class decorator registering an in-process plugin (tests, notebooks).

        Raises if the name is already taken by an entry point or another registration.
        """

        def deco(cls: type) -> type:
            key = name or getattr(cls, "name", "") or cls.__name__
            existing = self.entries().get(key)
            if existing is not None and existing.cls is not cls:
                raise self.errors.duplicate(
                    f"{self.title} name '{key}' is already provided by {existing.origin} "
                    f"({existing.target}); choose another name for {cls.__module__}.{cls.__qualname__}."
                )
            self.validate(cls, key)
            if not getattr(cls, "name", ""):
                cls.name = key
            self.local[key] = Entry(
                key, f"{cls.__module__}:{cls.__qualname__}", "<in-process>", "", cls=cls, registry=self
            )
            return cls

        return deco

    def unregister(self, name: str) -> None:
        """Remove an in-process registration (for tests)."""
        self.local.pop(name, None)

    # ---------------------------------------------------------------------------------------- loading
    def validate(self, cls: Any, label: str) -> None:
        """``cls`` subclasses the kind's base class and passes the kind's own checks."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise self.errors.base(
                f"'{label}' resolves to {cls!r}, which is not a subclass of {self.base_path}."
            )
        if self.check is not None:
            self.check(cls, label)

    def import_target(self, target: str, label: str) -> type:
        """Import ``module:attr`` (a plugin's exit or exception becomes this kind's one-line error)."""
        module_name, _, attr = target.partition(":")
        try:
            with _no_os_exit():
                obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a plugin calling sys.exit() on import must not end the host program
            raise self.errors.import_(
                f"{self.title} '{label}' ({target}) failed to import: {one_line(exc)}"
            ) from exc
        self.validate(obj, label)
        return obj

    def load(self, entry: Entry) -> type:
        """Import (once) and return the class behind an entry."""
        if entry.cls is not None:
            return entry.cls
        if entry.conflict:
            raise self.errors.duplicate(entry.conflict)
        key = f"{entry.origin}|{entry.target}"
        if key not in self._loaded:
            try:
                self._loaded[key] = self.import_target(entry.target, entry.name)
            except self.errors.import_ as exc:
                raise self.errors.import_(f"{exc} [from {entry.origin} {entry.version}]") from exc.__cause__
        return self._loaded[key]

    def check_name(self, name: Any) -> None:
        """A registered name or a ``module:Class`` path, else the one-line unknown-name error; imports
        nothing (a config can be checked before anything is built)."""
        if not isinstance(name, str) or not name:
            raise self.errors.unknown(f"{self.title} name must be a non-empty string, got {name!r}.")
        entries = self.entries()
        if name in entries or ":" in name:
            return
        names = sorted(entries)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise self.errors.unknown(
            f"Unknown {self.kind} '{name}'.{hint} Available: {', '.join(names) or '(none)'}. "
            f"{self.unregistered_hint}"
        )

    def get_class(self, name: str) -> type:
        """The class for a registered name or a 'module:Class' path."""
        self.check_name(name)
        entries = self.entries()
        if name in entries:
            return self.load(entries[name])
        return self.import_target(name, name)

    def origin(self, name: str) -> dict[str, str | None]:
        """``{"distribution", "version"}`` providing ``name`` (None for an unregistered name)."""
        entry = self.entries().get(name)
        if entry is None:
            return {"distribution": None, "version": None}
        return {"distribution": entry.origin, "version": entry.version}


def _check_scope(cls: type, label: str) -> None:
    if cls.scope not in SCOPES:
        raise AssignerError(f"Assigner '{label}' declares scope={cls.scope!r}; use one of {SCOPES}.")


#: the noise-pairing strategies
ASSIGNERS = Registry(
    GROUP,
    "assigner",
    Assigner,
    "immiscible_policy.assigners.Assigner",
    RegistryErrors(AssignerError, UnknownAssignerError, DuplicateAssignerError, AssignerImportError),
    "A strategy not registered can be given as 'module.path:ClassName'.",
    check=_check_scope,
)


def refresh() -> None:
    """Forget cached entry points of every kind (after installing a plugin in a running process, or
    changing the env var)."""
    for registry in Registry.instances:
        registry.refresh()


def available() -> dict[str, Entry]:
    """All known assigner names -> their entry (origin distribution, version); imports nothing."""
    return ASSIGNERS.available()


def register(name: str | None = None) -> Callable[[type], type]:
    """Class decorator registering an in-process strategy (tests, notebooks).

    Raises if the name is already taken by an entry point or another registration.
    """
    return ASSIGNERS.register(name)


def unregister(name: str) -> None:
    """Remove an in-process registration (for tests)."""
    ASSIGNERS.unregister(name)


def load(entry: Entry) -> type:
    """Import (once) and return the class behind an assigner entry."""
    return ASSIGNERS.load(entry)


def get_class(name: str) -> type:
    """The assigner class for a registered name or a 'module:Class' path."""
    return ASSIGNERS.get_class(name)


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
            f"Assigner '{name}' rejected its options ({given}): {one_line(exc).rstrip('.')}; "
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
    return ASSIGNERS.origin(assigner.name)
