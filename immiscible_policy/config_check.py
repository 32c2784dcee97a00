"""The whole resolved ``immiscible-train`` config checked before any data is loaded (both trainers).

Why one module: a bad value used to surface late and far from its key (``trainer.batch_size=0`` as a
ZeroDivisionError, ``trainer.sampler=foo`` at the first evaluation, ``trainer.keep_last=0`` at the first
checkpoint, ``trainer.lr=abc`` as ``could not convert string to float``) or not at all (``-1`` batches
trained zero steps; Hydra's suggested ``+trainer.epoch=3`` for a misspelt key added a key nothing reads).
:func:`check_config` turns every such input into one ``ValueError`` line that names the key and says what
to use; ``immiscible-train`` prints it as ``error: ...`` and exits with status 2.

What is checked: unknown keys at the top level, in ``trainer`` (and ``trainer.fid``) and in ``model``
(with a did-you-mean suggestion), missing required keys, types, ranges, choices (objective, sampler
and its fit to the objective, lr schedule, beta schedule, device, mixed precision, ``resume``), the
assigner (built once: name and params) and the few task settings both task families share. A trainer
setting is known here through :data:`POLICY_TRAINER` / :data:`IMAGE_TRAINER`: a new key in
``configs/trainer/*.yaml`` must be added there too (tests/test_config_check.py checks it).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from immiscible_policy.host import resolve_device
from immiscible_policy.loggers import check_logger
from immiscible_policy.noising import (
    LEGACY_OBJECTIVE_KEY,
    OBJECTIVES,
    SAMPLERS,
    resolve_sampler,
    trainer_objective,
)
from immiscible_policy.video import VIDEO_FORMATS, check_format

KINDS = ("policy", "image")
OTHER_KIND = {"policy": "image", "image": "policy"}
# diffusers' get_scheduler names that need nothing beyond warm-up and total steps
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")
SAMPLER_CHOICES = ("auto", *sorted({s for v in SAMPLERS.values() for s in v}))
RESUME_CHOICES = "false | true | auto"
TOP_LEVEL = ("assigner", "model", "trainer", "task", "run_dir", "resume", "resume_force", "logger")
DEFAULT_TRAINER = {"policy": "cpu_default", "image": "image_cpu"}
DEFAULT_MODEL = {"policy": "unet1d_cpu", "image": "unet2d_small"}


@dataclass(frozen=True)
class Spec:
    """One setting: its ``kind`` (int, num, bool, str, choice, device, ints, strs, betas), lower bound
    ``lo`` (inclusive; ``hi`` exclusive), whether null is allowed, whether it may be absent, an example."""

    kind: str
    example: Any
    lo: float | None = None
    hi: float | None = None
    null: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()
    above: bool = False  # lo is exclusive (> lo)
    note: str = ""  # what null / 0 means, appended to range messages


def _int(example, lo=None, **kw) -> Spec:
    return Spec("int", example, lo=lo, **kw)


def _num(example, lo=None, **kw) -> Spec:
    return Spec("num", example, lo=lo, **kw)


def _choice(example, choices, **kw) -> Spec:
    return Spec("choice", example, choices=tuple(choices), **kw)


BOOL = Spec("bool", True)

_COMMON_TRAINER: dict[str, Spec] = {
    "seed": _int(0),
    "device": Spec("device", "cpu"),
    "batch_size": _int(64, 1, note="per rank"),
    "emulate_ranks": _int(1, 1, optional=True),
    "lr": _num(1e-4, 0, above=True),
    "betas": Spec("betas", [0.9, 0.999]),
    "weight_decay": _num(0.0, 0),
    "lr_scheduler": _choice("cosine", LR_SCHEDULERS),
    "warmup_steps": _int(500, 0),
    "grad_clip": _num(1.0, 0, above=True, null=True, optional=True, note="null = no clipping"),
    "ema_power": _num(0.75, 0, above=True),
    "num_train_timesteps": _int(100, 1),
    "beta_schedule": _choice("squaredcos_cap_v2", BETA_SCHEDULES),
    "objective": _choice("epsilon", OBJECTIVES, optional=True),
    LEGACY_OBJECTIVE_KEY: _choice("epsilon", OBJECTIVES, optional=True),  # the objective's former name
    "sampler": _choice("auto", SAMPLER_CHOICES, optional=True),
    "num_inference_steps": _int(16, 1),
    "eval_at_end": BOOL,
    "keep_last": _int(3, 1, null=True, note="null = keep every checkpoint"),
    "n_loss_buckets": _int(10, 1),
    "progress": BOOL,
    "pair_ahead": Spec("bool", True, optional=True),  # pair_ahead.py: the next batch paired on a thread
}

POLICY_TRAINER: dict[str, Spec] = {
    **_COMMON_TRAINER,
    "epochs": _int(60, 1),
    "max_steps_per_epoch": _int(10, 1, null=True, optional=True, note="null = every full batch"),
    "max_epochs_this_run": _int(5, 1, null=True, optional=True, note="null = to trainer.epochs"),
    "eval_every_epochs": _int(10, 0, note="0 = only at the end"),
    # film task.eval.n_video_episodes episodes of each evaluation (run_dir/videos/, and to the dashboards)
    "eval_video": _choice("mp4", VIDEO_FORMATS, null=True, optional=True, note="or null = no video"),
    "checkpoint_every_epochs": _int(10, 0, note="0 = only at the end"),
}

FID: dict[str, Spec] = {
    "enabled": BOOL,
    "n_samples": _int(500, 2),
    "n_real": _int(5000, 2),
    "seed": _int(1234),
    "kid_subsets": _int(100, 1),
    "kid_subset_size": _int(100, 2, null=True, note="null = min(1000, n)"),
    "cache_dir": Spec("str", "/tmp/fid", null=True),
    "weights": Spec("str", "/path/to/pt_inception.pth", null=True),
    "device": Spec("device", "cpu", null=True),
    "resize": Spec("str", "tf1", null=True, optional=True),
    # Inception FID at the last step only (it costs ~0.1-0.2 s per image on a CPU)
    "only_at_end": Spec("bool", False, optional=True),
}

#: ``trainer.cfd``: the fast in-training metric (metrics/classifier_fd.py, docs/image_benchmark.md)
CFD: dict[str, Spec] = {
    "enabled": BOOL,
    "n_samples": _int(2000, 2),
    "n_real": _int(10000, 2, null=True, note="null = the whole training set"),
    "seed": _int(1234),
    "cache_dir": Spec("str", "~/.cache/immiscible_policy/classifier_fd", null=True),
    "device": Spec("device", "cpu", null=True),
}

IMAGE_TRAINER: dict[str, Spec] = {
    **_COMMON_TRAINER,
    "max_steps": _int(5000, 1),
    "max_steps_this_run": _int(1000, 1, null=True, optional=True, note="null = to trainer.max_steps"),
    "mixed_precision": _choice("auto", ("auto", "bf16", "no")),
    "sample_batch_size": _int(128, 1),
    "log_every_steps": _int(50, 0, note="0 = only at evaluations and checkpoints"),
    "sample_every_steps": _int(1000, 0, note="0 = only at eval steps and the end"),
    "n_grid": _int(64, 1),
    "eval_every_steps": _int(1000, 0, note="0 = only at the end"),
    "checkpoint_every_steps": _int(1000, 0, note="0 = only at the end"),
    "fid": Spec("section", None),
    "cfd": Spec("section", None, optional=True),
    "final_steps": Spec("ints", [1, 2, 4, 8, 16], lo=1, null=True, optional=True, note="null = none"),
}

POLICY_MODEL: dict[str, Spec] = {
    "name": Spec("str", "unet1d_cpu", optional=True),
    "down_dims": Spec("ints", [64, 128, 256], lo=1),
    "kernel_size": _int(5, 1),
    "n_groups": _int(8, 1),
    "diffusion_step_embed_dim": _int(128, 1),
    "cond_predict_scale": BOOL,
    "vision": Spec("section", None, optional=True),  # image policies' encoder (task.obs_type=image)
}
#: ``model.vision``: the image encoder of image-observation policies (policy/vision.py); optional keys take
#: ResNet-18's values (policy/build.py VISION_DEFAULTS)
POLICY_VISION: dict[str, Spec] = {
    "channels": Spec("ints", [16, 32, 64, 128], lo=1, optional=True),
    "blocks": Spec("ints", [1, 1, 1, 1], lo=1, optional=True),
    "group_size": _int(16, 1, optional=True),
    "num_keypoints": _int(32, 1, optional=True),
    "feature_dim": _int(64, 1, optional=True),
    "crop": _int(84, 1, optional=True),
}

IMAGE_MODEL: dict[str, Spec] = {
    "name": Spec("str", "unet2d_small", optional=True),
    "block_out_channels": Spec("ints", [32, 64, 64], lo=1),
    "down_block_types": Spec("strs", ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"]),
    "up_block_types": Spec("strs", ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]),
    "layers_per_block": _int(1, 1),
    "attention_head_dim": _int(8, 1, null=True, optional=True),
    "norm_num_groups": _int(8, 1, null=True, optional=True),
    "dropout": _num(0.0, 0, hi=1, optional=True),
}

# Task settings both families of a kind share (checked when present; the task's own code checks the rest).
POLICY_TASK: dict[str, Spec] = {
    "horizon": _int(16, 1, optional=True),
    "n_obs_steps": _int(2, 1, optional=True),
    "n_action_steps": _int(8, 1, optional=True),
    "max_train_episodes": _int(20, 1, null=True, optional=True, note="null = every episode"),
    # the share of episodes held out; 1.0 used to train on a handful of windows without a word
    "val_ratio": _num(0.02, 0, hi=1, optional=True),
    # add each demo's reflection (PushT keypoints/state only: policy/tasks.py task_mirror refuses the rest)
    "mirror": Spec("bool", True, optional=True),
}
POLICY_TASK_EVAL: dict[str, Spec] = {
    "n_episodes": _int(50, 1, optional=True),
    "max_steps": _int(300, 1, optional=True),
    # PushT: also roll out from the symmetric starts at each evaluation (docs/modes.md)
    "symmetric_rollouts": _int(50, 0, optional=True, note="0 = off"),
}
IMAGE_TASK: dict[str, Spec] = {
    "image_size": _int(32, 1, optional=True),
    "max_images": _int(256, 1, null=True, optional=True, note="null = every image"),
    "class_conditional": Spec("bool", False, optional=True),
}

TRAINERS = {"policy": POLICY_TRAINER, "image": IMAGE_TRAINER}
MODELS = {"policy": POLICY_MODEL, "image": IMAGE_MODEL}


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


def _bad(key: str, value: Any, problem: str, spec: Spec) -> ValueError:
    what = _describe(spec)
    example = spec.example
    return ValueError(f"{key}={show(value)} {problem}; use {what}, e.g. {key}={show(example)}.")


def _describe(spec: Spec) -> str:
    if spec.kind in ("int", "num"):
        noun = "an integer" if spec.kind == "int" else "a number"
        if spec.lo is not None:
            noun += f" {'>' if spec.above else '>='} {show(spec.lo)}"
        if spec.hi is not None:
            noun += f" and < {show(spec.hi)}"
    elif spec.kind == "bool":
        noun = "true or false"
    elif spec.kind == "choice":
        noun = "one of " + ", ".join(spec.choices)
    elif spec.kind == "device":
        noun = "auto, cpu, cuda, cuda:N or mps"
    elif spec.kind == "ints":
        noun = f"a non-empty list of integers >= {show(spec.lo)}"
    elif spec.kind == "strs":
        noun = "a non-empty list of names"
    elif spec.kind == "betas":
        noun = "two numbers in [0, 1)"
    else:
        noun = "a string"
    extras = [spec.note] if spec.note else []
    if spec.null and not spec.note:
        extras.append("or null")
    return noun + (f" ({'; '.join(extras)})" if extras else "")


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


def check_value(key: str, value: Any, spec: Spec) -> None:
    """One setting against its spec; a one-line ``ValueError`` naming ``key`` when it does not fit."""
    if value is None:
        if spec.null:
            return
        raise _bad(key, value, "is not allowed", spec)
    kind = spec.kind
    if kind in ("int", "num"):
        number = _as_number(value)
        if number is None or not math.isfinite(number):
            raise _bad(key, value, "is not a number", spec)
        if kind == "int" and (not float(number).is_integer() or isinstance(value, str)):
            raise _bad(key, value, "is not an integer", spec)
        low = spec.lo is not None and (number <= spec.lo if spec.above else number < spec.lo)
        if low or (spec.hi is not None and number >= spec.hi):
            raise _bad(key, value, "is out of range", spec)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _bad(key, value, "is not true/false", spec)
    elif kind == "choice":
        if not isinstance(value, str) or value not in spec.choices:
            near = difflib.get_close_matches(str(value), spec.choices, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise _bad(key, value, f"is not supported{hint}", spec)
    elif kind == "device":
        if not isinstance(value, str) or not _DEVICE.match(value):
            raise _bad(key, value, "is not a device", spec)
    elif kind == "str":
        if not isinstance(value, str) or not value:
            raise _bad(key, value, "is not a string", spec)
    elif kind in ("ints", "strs"):
        if not isinstance(value, list | tuple) or not value:
            raise _bad(key, value, "is not a non-empty list", spec)
        for item in value:
            ok = (
                isinstance(item, int) and not isinstance(item, bool) and item >= (spec.lo or 0)
                if kind == "ints"
                else isinstance(item, str) and bool(item)
            )
            if not ok:
                raise _bad(key, value, f"holds {show(item)}", spec)
    elif kind == "betas":
        numbers = [_as_number(v) for v in value] if isinstance(value, list | tuple) else []
        if len(numbers) != 2 or any(b is None or not 0 <= b < 1 for b in numbers):
            raise _bad(key, value, "is not two numbers in [0, 1)", spec)


def _required(specs: Mapping[str, Spec]) -> set[str]:
    return {k for k, v in specs.items() if not v.optional}


def _looks_like(values: Mapping[str, Any], other: Mapping[str, Spec], own: Mapping[str, Spec]) -> bool:
    """Whether a section is the other kind's (holds its own required keys, lacks ours)."""
    theirs, ours = _required(other) - _required(own), _required(own) - _required(other)
    return all(k in values for k in theirs) and not all(k in values for k in ours)


def _a(kind: str) -> str:
    """The article of a task kind: an image, a policy."""
    return "an" if kind == "image" else "a"


def _refuse_other_kind(group: str, values: Mapping[str, Any], kind: str, task: Any, subject: str) -> str:
    """Refuse a ``trainer`` / ``model`` section of the other task kind in one line naming the group to use.

    Why: checked key by key, the other kind's section would fail on its first foreign key, a message that
    hides the real mistake (the wrong config group). Returns the hint appended to this group's
    missing-key errors, which name the same remedy.
    """
    specs, defaults = {"trainer": (TRAINERS, DEFAULT_TRAINER), "model": (MODELS, DEFAULT_MODEL)}[group]
    default, is_kind = defaults[kind], f"task {task} is {_a(kind)} {kind} task"
    if _looks_like(values, specs[OTHER_KIND[kind]], specs[kind]):
        raise ValueError(f"{subject} but {is_kind}; use {group}={default}.")
    return f" ({is_kind}: use {group}={default})"


def _suggest(name: str, candidates: list[str]) -> str | None:
    near = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return near[0] if near else None


def check_section(
    prefix: str,
    values: Mapping[str, Any],
    specs: Mapping[str, Spec],
    *,
    what: str,
    fix_missing: str = "",
    strict: bool = True,
) -> None:
    """Unknown keys (did-you-mean), missing required keys and every value of one config section."""
    if strict:
        for key in values:
            if key in specs:
                continue
            near = _suggest(str(key), list(specs))
            hint = (
                f"did you mean {prefix}.{near}?"
                if near
                else f"its settings are {', '.join(k for k in specs if k != LEGACY_OBJECTIVE_KEY)}"
            )
            raise ValueError(
                f"{prefix}.{key} is not a setting of {what} ({hint}); remove it or correct its name "
                f"(a key added with +{prefix}.{key}=... is never read)."
            )
    for key, spec in specs.items():
        if key not in values:
            if spec.optional:
                continue
            raise ValueError(f"{prefix}.{key} is missing: {what} needs it{fix_missing}.")
        if spec.kind != "section":
            check_value(f"{prefix}.{key}", values[key], spec)


# ------------------------------------------------------------------------------------------------ config


def resume_mode(cfg: Any) -> str:
    """``resume`` as ``"false"``, ``"true"`` or ``"auto"`` (resume when run_dir has a checkpoint, else start)."""
    value = cfg.get("resume", False) if hasattr(cfg, "get") else False
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


def _resolved(cfg: Any, key: str) -> Any:
    """``cfg[key]`` as plain Python with interpolations resolved; a one-line error naming the key."""
    try:
        node = cfg[key]
        if isinstance(node, DictConfig) or OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
        return node
    except Exception as err:  # interpolation / resolver errors (omegaconf's are not ValueErrors)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{key}: cannot resolve its value ({first}); fix the interpolation.") from err


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


def task_kind(cfg: Any) -> str:
    """``task.type`` checked: policy or image."""
    task = cfg.get("task") if hasattr(cfg, "get") else None
    kind = task.get("type") if hasattr(task, "get") else None
    if kind not in KINDS:
        raise ValueError(f"task.type={show(kind)} is not supported; use one of {', '.join(KINDS)}.")
    return str(kind)


def check_config(cfg: Any, kind: str | None = None) -> dict[str, Any]:
    """Check the whole resolved train config; returns ``{"kind", "objective", "sampler", "resume"}``.

    ``kind`` (policy / image) defaults to ``task.type``. Raises a one-line ``ValueError`` naming the key
    and what to use for the first problem found. Cheap (no data, no model): builds the assigner once.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(
            f"{missing[0]} is required (??? in its config); set it on the command line, e.g. {missing[0]}=..."
        )
    for key in cfg:
        if key not in TOP_LEVEL:
            near = _suggest(str(key), list(TOP_LEVEL)) or _suggest(str(key), list(POLICY_TRAINER))
            near = near if near in TOP_LEVEL else (f"trainer.{near}" if near else None)
            hint = f"did you mean {near}?" if near else f"the top-level settings are {', '.join(TOP_LEVEL)}"
            raise ValueError(
                f"{key} is not a setting of immiscible-train ({hint}); remove it or correct its name."
            )
    for key in ("assigner", "model", "trainer", "task"):
        if not isinstance(cfg.get(key), DictConfig):
            raise ValueError(f"{key} is missing or not a config group; pick one, e.g. {key}=<name>.")
    kind = kind or task_kind(cfg)
    mode = resume_mode(cfg)
    if "resume_force" in cfg:
        check_value("resume_force", cfg.resume_force, BOOL)
    if "logger" in cfg:
        check_logger(_resolved(cfg, "logger"))  # the dashboards' packages, before any data is loaded
    run_dir = cfg.get("run_dir")
    if run_dir is not None and (not isinstance(run_dir, str) or not run_dir.strip()):
        raise ValueError(f"run_dir={show(run_dir)} is not a path; set run_dir=runs/<name>.")

    tr = _resolved(cfg, "trainer")
    other = OTHER_KIND[kind]
    name = cfg.task.get("name")
    check_plain_name("task.name", name)
    fix = _refuse_other_kind("trainer", tr, kind, name, f"trainer is the {other} trainer's config")
    check_section("trainer", tr, TRAINERS[kind], what=f"the {kind} trainer", fix_missing=fix)
    if tr.get("eval_video"):
        check_format(tr["eval_video"], "trainer.eval_video")  # mp4: imageio-ffmpeg installed
    if kind == "image":
        fid = tr.get("fid")
        if not isinstance(fid, Mapping):
            raise ValueError(
                f"trainer.fid={show(fid)} is not a section; use trainer={DEFAULT_TRAINER[kind]}."
            )
        check_section("trainer.fid", fid, FID, what="the FID evaluation", fix_missing=fix)
        _check_fid_resize(fid)
        _check_cfd(tr)
    device = _check_device(tr)
    if kind == "image" and tr["mixed_precision"] == "bf16" and device.type != "cuda":
        raise ValueError("trainer.mixed_precision=bf16 needs CUDA; use auto or no on the CPU.")

    model = _resolved(cfg, "model")
    model_fix = _refuse_other_kind(
        "model", model, kind, name, f"model={model.get('name')} is {_a(other)} {other} model"
    )
    check_section("model", model, MODELS[kind], what=f"the {kind} model", fix_missing=model_fix)
    if kind == "image":
        lengths = {k: len(model[k]) for k in ("block_out_channels", "down_block_types", "up_block_types")}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                "model.block_out_channels, model.down_block_types and model.up_block_types must have the same "
                f"length (got {', '.join(f'{k}: {v}' for k, v in lengths.items())}); make them match."
            )

    task = _resolved(cfg, "task")
    if kind == "policy":
        _check_vision(model, task)
        check_section("task", task, POLICY_TASK, what="the task", strict=False)
        _check_mirror(task)
        if isinstance(task.get("eval"), Mapping):
            check_section("task.eval", task["eval"], POLICY_TASK_EVAL, what="the task", strict=False)
            _check_symmetric_rollouts(task)
    else:
        check_section("task", task, IMAGE_TASK, what="the task", strict=False)

    legacy = tr.get(LEGACY_OBJECTIVE_KEY)
    if legacy is not None and tr.get("objective") is not None and legacy != tr["objective"]:
        raise ValueError(
            f"trainer.{LEGACY_OBJECTIVE_KEY}={show(legacy)} (the former name of trainer.objective) contradicts "
            f"trainer.objective={show(tr['objective'])}; set only trainer.objective."
        )
    objective = trainer_objective(tr)
    try:
        sampler = resolve_sampler(
            objective, tr.get("sampler"), diffusion_default="ddpm" if kind == "policy" else "ddim"
        )
    except ValueError as err:
        raise ValueError(f"trainer.{err}") from None

    assigner = _check_assigner(cfg, tr, kind, task)
    return {"kind": kind, "objective": objective, "sampler": sampler, "resume": mode, "assigner": assigner}


def _check_vision(model: Mapping[str, Any], task: Mapping[str, Any]) -> None:
    """An image encoder exactly when the task observes images; its settings."""
    vision, image = model.get("vision"), task.get("obs_type") == "image"
    if image and not isinstance(vision, Mapping):
        raise ValueError(
            f"task.obs_type=image needs an image model but model={model.get('name')} has no model.vision; "
            "use model=unet1d_image_cpu (CPU) or model=dp_image (GPU)."
        )
    if vision is not None and not image:
        raise ValueError(
            f"model={model.get('name')} has an image encoder (model.vision) but task.obs_type="
            f"{show(task.get('obs_type'))}; use task=pusht_image or a low-dim model (model={DEFAULT_MODEL['policy']})."
        )
    if image:
        check_section("model.vision", vision, POLICY_VISION, what="the image encoder")
        if len(vision.get("channels", [0] * 4)) != len(vision.get("blocks", [0] * 4)):
            raise ValueError(
                f"model.vision.channels {vision.get('channels')} and model.vision.blocks {vision.get('blocks')} "
                "need one entry per ResNet stage each; make them the same length."
            )
        size, crop = int(task.get("image_size", 96)), int(vision.get("crop", 84))
        if crop > size:
            raise ValueError(
                f"model.vision.crop={crop} exceeds task.image_size={size}; use a crop <= {size}."
            )


def _check_mirror(task: Mapping[str, Any]) -> None:
    """``task.mirror=true`` only where a mirror is defined (PushT keypoints/state), before any data is read."""
    from immiscible_policy.policy.tasks import task_mirror

    task_mirror(task)


def _check_symmetric_rollouts(task: Mapping[str, Any]) -> None:
    """``task.eval.symmetric_rollouts`` > 0 only where the evaluation rolls out in PushT (the starts are
    PushT states), before any data is read."""
    if not task["eval"].get("symmetric_rollouts"):
        return
    from immiscible_policy.policy.rollout import is_pusht_task

    if not is_pusht_task(task):
        raise ValueError(
            f"task.eval.symmetric_rollouts={task['eval']['symmetric_rollouts']} needs a PushT evaluation "
            f"(task.env=pusht, or task=lerobot with task.eval_env=pusht), which task {task.get('name')!r} does "
            "not have; set task.eval.symmetric_rollouts=0."
        )


def _check_cfd(tr: Mapping[str, Any]) -> None:
    """``trainer.cfd`` (optional section) and ``trainer.final_steps``, which are scored by it."""
    cfd = tr.get("cfd")
    if cfd is not None:
        if not isinstance(cfd, Mapping):
            raise ValueError(
                f"trainer.cfd={show(cfd)} is not a section; use trainer={DEFAULT_TRAINER['image']}."
            )
        check_section("trainer.cfd", cfd, CFD, what="the classifier metric")
    if tr.get("final_steps") and not (isinstance(cfd, Mapping) and cfd.get("enabled")):
        raise ValueError(
            f"trainer.final_steps={show(tr['final_steps'])} is scored by the classifier metric; set "
            "trainer.cfd.enabled=true or trainer.final_steps=null."
        )


def _check_fid_resize(fid: Mapping[str, Any]) -> None:
    if fid.get("resize") is None:
        return
    try:
        from immiscible_policy.metrics.fid import check_resize
    except ImportError:  # the FID module is optional; the evaluation reports its absence itself
        return
    check_resize(fid["resize"], "trainer.fid.resize")


def _check_device(tr: Mapping[str, Any]) -> Any:
    """``trainer.device`` resolved (auto -> cuda or cpu); one line for CUDA that is absent or too few."""
    device = resolve_device(str(tr["device"]))
    if device.type == "cuda" and device.index is not None:
        import torch

        n = torch.cuda.device_count()
        if device.index >= n:
            raise ValueError(
                f"trainer.device={tr['device']} but this machine has {n} CUDA device(s); "
                f"use cuda:0..cuda:{n - 1}."
            )
    return device


def _check_assigner(cfg: Any, tr: Mapping[str, Any], kind: str, task: Mapping[str, Any]) -> Any:
    """Build the assigner (its own one-line errors name the name or param) and check its fit."""
    from immiscible_policy.pairing_schedule import PairingSchedule, check_schedule_fits
    from immiscible_policy.parallel import assigner_distributed
    from immiscible_policy.registry import create_from_config

    assigner_cfg = _resolved(cfg, "assigner")
    assigner = create_from_config(assigner_cfg)
    check_schedule_fits(PairingSchedule.from_config(assigner_cfg), assigner)
    if kind == "image" and assigner.uses_cond and not task.get("class_conditional", False):
        raise ValueError(
            f"assigner {assigner.name!r} pairs noise within conditions, but task {task.get('name')!r} is "
            "unconditional: set task.class_conditional=true or pick an assigner without conditions."
        )
    if int(tr.get("emulate_ranks") or 1) > 1 and assigner_distributed(assigner) == "global":
        raise ValueError(
            "trainer.emulate_ranks pairs each rank's slice on its own (distributed: local); "
            "set assigner.params.distributed=local or launch real processes for 'global'."
        )
    return assigner
