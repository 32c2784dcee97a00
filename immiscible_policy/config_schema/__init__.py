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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from immiscible_policy.config_schema.checks import (
    _check_logger,
    _check_resume,
    _check_run_dir,
    check_plain_name,
    resume_value,
)
from immiscible_policy.config_schema.fields import (
    KINDS,
    MISSING,
    RESUME_CHOICES,
    Rule,
    bad_value,
    check_section,
    check_value,
    defaults_of,
    required,
    rules_of,
    schema_node,
    setting,
    show,
    suggest,
)
from immiscible_policy.config_schema.models import ImageModelConfig, PolicyModelConfig, VisionConfig
from immiscible_policy.config_schema.tasks import ImageTaskConfig, PolicyEvalConfig, PolicyTaskConfig
from immiscible_policy.config_schema.trainers import (
    CfdConfig,
    FidConfig,
    ImageTrainerConfig,
    PolicyTrainerConfig,
    TrainerConfig,
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


#: the Hydra group each :data:`SCHEMAS` node fills (``train`` is the root)
SCHEMA_GROUPS: dict[str, str] = {
    "policy_trainer": "trainer",
    "image_trainer": "trainer",
    "policy_model": "model",
    "image_model": "model",
    "policy_task": "task",
    "image_task": "task",
}


def uncomposed_keys() -> set[str]:
    """Dotted keys of the settings only some presets compose (``composed=False``: ``task.mirror``,
    ``model.vision``). On a preset without them Hydra would refuse ``task.mirror=true`` as an unknown key,
    and "correct its name" is the wrong advice for a right name: :func:`~immiscible_policy.cli._hydra.compose_train`
    adds such a key instead and the family's own check says why it does not apply there."""
    return {
        f"{group}.{key}"
        for name, group in SCHEMA_GROUPS.items()
        for key, rule in rules_of(SCHEMAS[name]).items()
        if not rule.composed
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

__all__ = [
    "KINDS",
    "MISSING",
    "MODELS",
    "RESUME_CHOICES",
    "SCHEMAS",
    "SCHEMA_GROUPS",
    "TASKS",
    "TRAINERS",
    "CfdConfig",
    "FidConfig",
    "ImageModelConfig",
    "ImageTaskConfig",
    "ImageTrainerConfig",
    "PolicyEvalConfig",
    "PolicyModelConfig",
    "PolicyTaskConfig",
    "PolicyTrainerConfig",
    "Rule",
    "TrainConfig",
    "TrainerConfig",
    "VisionConfig",
    "bad_value",
    "check_plain_name",
    "check_section",
    "check_value",
    "defaults_of",
    "register_configs",
    "required",
    "resume_value",
    "rules_of",
    "schema_node",
    "setting",
    "show",
    "suggest",
    "trainer_sampler",
    "uncomposed_keys",
]
