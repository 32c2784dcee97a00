"""The whole resolved ``immiscible-train`` config checked before any data is loaded (both trainers).

Why one check up front: a bad value used to surface late and far from its key (``trainer.batch_size=0``
as a ZeroDivisionError, ``trainer.sampler=foo`` at the first evaluation, ``trainer.keep_last=0`` at the
first checkpoint, ``trainer.lr=abc`` as ``could not convert string to float``) or not at all (``-1``
batches trained zero steps; Hydra's suggested ``+trainer.epoch=3`` for a misspelt key added a key nothing
reads). :func:`check_config` turns every such input into one ``ValueError`` line that names the key and
says what to use; ``immiscible-train`` prints it as ``error: ...`` and exits with status 2.

Each setting's type, range and choices are declared with the setting, in
:mod:`immiscible_policy.config_schema` (unknown keys with a did-you-mean, missing keys and every value
come from there). What stays here is what no single setting can know: which task kind the config is
(and a trainer or model of the other kind), the sampler against the objective, the image model's level
lists against each other, the image encoder against the task's observations, mirror and symmetric
rollouts against the task family, bf16 against the device, the final-step metric against the classifier
metric, the objective's former name against the new one, and the assigner (built once) against the
pairing schedule, the task and the rank emulation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from immiscible_policy.config_schema import (
    KINDS,
    MODELS,
    TASKS,
    TRAINERS,
    TrainConfig,
    VisionConfig,
    bad_value,
    check_plain_name,
    check_section,
    check_value,
    defaults_of,
    required,
    resume_value,
    rules_of,
    show,
    suggest,
    trainer_sampler,
)
from immiscible_policy.host import resolve_device
from immiscible_policy.noising import (
    LEGACY_OBJECTIVE_KEY,
    SAMPLERS,
    build_scheduler,
    objective_params,
    trainer_objective,
)

__all__ = ["check_config", "check_plain_name", "resume_mode", "show", "task_kind"]

OTHER_KIND = {"policy": "image", "image": "policy"}
TOP_LEVEL = tuple(rules_of(TrainConfig))
GROUPS = tuple(k for k, r in rules_of(TrainConfig).items() if r.kind == "group")
DEFAULT_TRAINER = {"policy": "cpu_default", "image": "image_cpu"}
DEFAULT_MODEL = {"policy": "unet1d_cpu", "image": "unet2d_small"}


def resume_mode(cfg: Any) -> str:
    """``resume`` as ``"false"``, ``"true"`` or ``"auto"`` (resume when run_dir has a checkpoint, else start)."""
    return resume_value(cfg.get("resume", False) if hasattr(cfg, "get") else False)


def task_kind(cfg: Any) -> str:
    """``task.type`` checked: policy or image."""
    task = cfg.get("task") if hasattr(cfg, "get") else None
    kind = task.get("type") if hasattr(task, "get") else None
    if kind not in KINDS:
        raise ValueError(f"task.type={show(kind)} is not supported; use one of {', '.join(KINDS)}.")
    return str(kind)


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


def _a(kind: str) -> str:
    """The article of a task kind: an image, a policy."""
    return "an" if kind == "image" else "a"


def _looks_like(values: Mapping[str, Any], other: type, own: type) -> bool:
    """Whether a section is the other kind's (holds its own required keys, lacks ours)."""
    theirs, ours = required(other) - required(own), required(own) - required(other)
    return all(k in values for k in theirs) and not all(k in values for k in ours)


def _refuse_other_kind(group: str, values: Mapping[str, Any], kind: str, task: Any, subject: str) -> str:
    """Refuse a ``trainer`` / ``model`` section of the other task kind in one line naming the group to use.

    Why: checked key by key, the other kind's section would fail on its first foreign key, a message that
    hides the real mistake (the wrong config group). Returns the hint appended to this group's
    missing-key errors, which name the same remedy.
    """
    schemas, defaults = {"trainer": (TRAINERS, DEFAULT_TRAINER), "model": (MODELS, DEFAULT_MODEL)}[group]
    default, is_kind = defaults[kind], f"task {task} is {_a(kind)} {kind} task"
    if _looks_like(values, schemas[OTHER_KIND[kind]], schemas[kind]):
        raise ValueError(f"{subject} but {is_kind}; use {group}={default}.")
    return f" ({is_kind}: use {group}={default})"


def _check_top_level(cfg: DictConfig) -> None:
    """Unknown top-level keys (a trainer key given without ``trainer.`` is suggested as one) and the
    config groups being there."""
    for key in cfg:
        if key not in TOP_LEVEL:
            near = suggest(str(key), list(TOP_LEVEL)) or suggest(str(key), list(rules_of(TRAINERS["policy"])))
            near = near if near in TOP_LEVEL else (f"trainer.{near}" if near else None)
            hint = f"did you mean {near}?" if near else f"the top-level settings are {', '.join(TOP_LEVEL)}"
            raise ValueError(
                f"{key} is not a setting of immiscible-train ({hint}); remove it or correct its name."
            )
    for key in GROUPS:
        if not isinstance(cfg.get(key), DictConfig):
            raise ValueError(f"{key} is missing or not a config group; pick one, e.g. {key}=<name>.")


def check_config(cfg: Any, kind: str | None = None) -> dict[str, Any]:
    """Check the whole resolved train config; returns ``{"kind", "objective", "sampler", "resume", "assigner"}``.

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
    _check_top_level(cfg)
    kind = kind or task_kind(cfg)
    mode = resume_mode(cfg)
    for key, rule in rules_of(TrainConfig).items():
        if rule.kind != "group" and key in cfg:
            check_value(key, _resolved(cfg, key), rule)

    tr = _resolved(cfg, "trainer")
    other = OTHER_KIND[kind]
    name = cfg.task.get("name")
    check_value("task.name", name, rules_of(TASKS[kind])["name"])  # the messages below name the task
    fix = _refuse_other_kind("trainer", tr, kind, name, f"trainer is the {other} trainer's config")
    check_section("trainer", tr, TRAINERS[kind], fix_missing=fix, also_known=(LEGACY_OBJECTIVE_KEY,))
    if kind == "image":
        _check_final_steps(tr)
    device = _check_device(tr)
    if kind == "image" and tr["mixed_precision"] == "bf16" and device.type != "cuda":
        raise ValueError("trainer.mixed_precision=bf16 needs CUDA; use auto or no on the CPU.")

    model = _resolved(cfg, "model")
    model_fix = _refuse_other_kind(
        "model", model, kind, name, f"model={model.get('name')} is {_a(other)} {other} model"
    )
    check_section("model", model, MODELS[kind], fix_missing=model_fix)
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
    check_section("task", task, TASKS[kind])
    if kind == "policy":
        _check_mirror(task)
        _check_neighbour_batches(tr, task)
        if isinstance(task.get("eval"), Mapping):
            _check_symmetric_rollouts(task)

    objective = _check_objective(tr)
    params = objective_params(tr)
    if params:  # the objective's own settings: built now, so a bad one fails before any data is loaded
        build_scheduler(
            objective,
            num_train_timesteps=int(tr["num_train_timesteps"]),
            beta_schedule=str(tr["beta_schedule"]),
            params=params,
        )
    sampler = _check_sampler(tr, objective, kind)
    assigner = _check_assigner(cfg, tr, kind, task)
    return {"kind": kind, "objective": objective, "sampler": sampler, "resume": mode, "assigner": assigner}


def _check_objective(tr: Mapping[str, Any]) -> str:
    """``trainer.objective``, or the former ``trainer.prediction_type`` of older configs (checked as an
    objective; both given: they must agree). Renaming it is :func:`noising.rename_legacy_objective`'s."""
    legacy = tr.get(LEGACY_OBJECTIVE_KEY)
    if legacy is not None:
        check_value(f"trainer.{LEGACY_OBJECTIVE_KEY}", legacy, rules_of(TRAINERS["policy"])["objective"])
        if tr.get("objective") is not None and legacy != tr["objective"]:
            raise ValueError(
                f"trainer.{LEGACY_OBJECTIVE_KEY}={show(legacy)} (the former name of trainer.objective) "
                f"contradicts trainer.objective={show(tr['objective'])}; set only trainer.objective."
            )
    return trainer_objective(tr)


def _check_sampler(tr: Mapping[str, Any], objective: str, kind: str) -> str:
    """``trainer.sampler`` resolved for the objective (``auto``: the trainer's own choice,
    :func:`config_schema.trainer_sampler`). A name no objective knows is "not supported" with the list;
    a known one that does not fit this objective says which would."""
    try:
        return trainer_sampler(tr, objective, kind)
    except ValueError as err:
        from immiscible_policy.objectives import get_class

        value = tr.get("sampler")
        known = {s for samplers in SAMPLERS.values() for s in samplers} | set(get_class(objective).samplers)
        if value not in known:
            choices = ("auto", *sorted(known))
            rule = replace(rules_of(TRAINERS[kind])["sampler"], kind="choice", choices=choices)
            near = suggest(str(value), list(choices))
            hint = f" (did you mean {near}?)" if near else ""
            raise bad_value("trainer.sampler", value, f"is not supported{hint}", rule) from None
        raise ValueError(f"trainer.{err}") from None


def _check_final_steps(tr: Mapping[str, Any]) -> None:
    """``trainer.final_steps`` is scored by the classifier metric (``trainer.cfd``)."""
    cfd = tr.get("cfd")
    if tr.get("final_steps") and not (isinstance(cfd, Mapping) and cfd.get("enabled")):
        raise ValueError(
            f"trainer.final_steps={show(tr['final_steps'])} is scored by the classifier metric; set "
            "trainer.cfd.enabled=true or trainer.final_steps=null."
        )


def _check_vision(model: Mapping[str, Any], task: Mapping[str, Any]) -> None:
    """An image encoder exactly when the task observes images; its stages and crop against the frames."""
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
        v = {**defaults_of(VisionConfig), **vision}  # absent keys: the encoder's defaults (policy/build.py)
        if len(v["channels"]) != len(v["blocks"]):
            raise ValueError(
                f"model.vision.channels {v['channels']} and model.vision.blocks {v['blocks']} "
                "need one entry per ResNet stage each; make them the same length."
            )
        size, crop = int(task.get("image_size", 96)), int(v["crop"])
        if crop > size:
            raise ValueError(
                f"model.vision.crop={crop} exceeds task.image_size={size}; use a crop <= {size}."
            )


def _check_mirror(task: Mapping[str, Any]) -> None:
    """``task.mirror=true`` only where a mirror is defined (PushT keypoints/state), before any data is read."""
    from immiscible_policy.policy.tasks import task_mirror

    task_mirror(task)


def _check_neighbour_batches(tr: Mapping[str, Any], task: Mapping[str, Any]) -> None:
    """``trainer.neighbour_batches`` = k > 1 only where a batch (per rank) holds whole groups and the
    neighbours can be found from the observations the network sees (low-dim), before any data is read."""
    k = int(tr.get("neighbour_batches") or 1)
    if k == 1:
        return
    batch = int(tr["batch_size"])
    if batch % k:
        divisors = [d for d in range(2, min(batch, 64) + 1) if batch % d == 0][:4]
        raise ValueError(
            f"trainer.neighbour_batches={k} must divide trainer.batch_size={batch} (a batch holds whole groups); "
            f"use one of {divisors or [1]}."
        )
    if task.get("obs_type") == "image":
        raise ValueError(
            f"trainer.neighbour_batches={k} finds neighbours by low-dim observation, but task {task.get('name')!r} "
            "observes images; use trainer.neighbour_batches=1."
        )


def _check_symmetric_rollouts(task: Mapping[str, Any]) -> None:
    """``task.eval.symmetric_rollouts`` > 0 only where the evaluation rolls out in PushT (the starts are
    PushT states), before any data is read."""
    if not task["eval"].get("symmetric_rollouts"):
        return
    from immiscible_policy.policy.tasks import is_pusht_task

    if not is_pusht_task(task):
        raise ValueError(
            f"task.eval.symmetric_rollouts={task['eval']['symmetric_rollouts']} needs a PushT evaluation "
            f"(task.env=pusht, or task=lerobot with task.eval_env=pusht), which task {task.get('name')!r} does "
            "not have; set task.eval.symmetric_rollouts=0."
        )


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
