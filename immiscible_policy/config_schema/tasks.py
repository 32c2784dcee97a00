"""``task.*``: the windows and evaluation every policy task shares, and what every image task shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from immiscible_policy.config_schema.checks import check_plain_name
from immiscible_policy.config_schema.fields import KINDS, MISSING, redefault, section, setting

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
class TaskConfig:
    """What every task has, whichever trainer it feeds: its name and kind."""

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


@dataclass(kw_only=True)
class PolicyTaskConfig(TaskConfig):
    """``task.*`` of a policy task: the windows every family cuts from its demos and the evaluation. A
    family (``task.env``: policy/tasks.py) adds its own keys (dataset path, observation keys, ...)."""

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
class ImageTaskConfig(TaskConfig):
    """``task.*`` of an image task: which images and how they are prepared (image/data.py)."""

    type: str = redefault(TaskConfig, "type", "image")
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
