"""The shared noising core: one training step's (x_t, t, target) for both trainers.

Data flow of a step (see docs/architecture.md)::

    noise   = randn_like(x0, generator)                    # one draw per step, per-rank stream
    pairing = assigner.pair(x0, noise, generator=generator)
    t       = objective.draw_timesteps(B, ...)             # drawn independently of the pairing
    x_t     = objective.add_noise(pairing.x0, pairing.noise, t)
    target  = objective.target(pairing.x0, pairing.noise, t)   # noise | v | x0 | noise - x0 | ...

diffusers' ``add_noise(original, noise, t)`` takes the noise as an argument: that is the seam where the
assigner acts. With ``vanilla`` the DDPM objectives reproduce ``scheduler.add_noise`` / ``get_velocity``
exactly. Nothing here knows which trainer calls it, which assigner it holds or which objective: the
objective is a strategy (:mod:`immiscible_policy.objectives`, docs/objectives.md).

The trainers' factory lives here too (:func:`build_core`, :func:`trainer_objective`,
:func:`resolve_sampler`): ``trainer.objective`` is any registered objective (built-ins ``epsilon |
v_prediction | sample | flow``) for both trainers, eval and analysis, and a sampler that does not fit it
is a one-line error.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from immiscible_policy import objectives
from immiscible_policy.assigners.base import Assigner
from immiscible_policy.objectives import BUILTIN_NAMES, BUILTIN_SAMPLERS, Objective, as_objective
from immiscible_policy.objectives.ddpm import PREDICTION_TYPES, make_inference_scheduler
from immiscible_policy.objectives.flow import RectifiedFlow, euler_sample, heun_sample
from immiscible_policy.pairing import ScheduledPairing
from immiscible_policy.pairing_schedule import PairingSchedule

#: the built-in objectives and their samplers (any registered objective is accepted:
#: :func:`trainer_objective`, :func:`resolve_sampler`); kept for callers that list the built-ins
OBJECTIVES = BUILTIN_NAMES
SAMPLERS = BUILTIN_SAMPLERS

__all__ = [
    "LEGACY_OBJECTIVE_KEY",
    "OBJECTIVES",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "NoisingCore",
    "RectifiedFlow",
    "TrainingPair",
    "build_core",
    "build_scheduler",
    "condition_leak",
    "euler_sample",
    "heun_sample",
    "make_inference_scheduler",
    "noise_generator",
    "noise_stats",
    "rename_legacy_objective",
    "resolve_sampler",
    "trainer_objective",
]


@dataclass
class TrainingPair:
    """One step's model input and target.

    Attributes:
        x_t: (B, ...) noised input.
        timesteps: (B,) long DDPM timesteps, or float t in [0, 1] for rectified flow.
        model_timesteps: (B,) what to feed the model (== timesteps for DDPM, scaled t for flow).
        target: (B, ...) regression target for the model output.
        x0: (B, ...) the clean data actually noised (after any assigner transform).
        noise: (B, ...) the noise actually used (after pairing).
        info: the pairing's diagnostics plus ``assign_ms`` (host wall time of the assigner call).
        cond: (B, ...) the rows' conditions as given to :meth:`NoisingCore.training_pair` (None for an
            unconditional model); the condition-leak diagnostic regresses ``noise`` on it.
    """

    x_t: Tensor
    timesteps: Tensor
    model_timesteps: Tensor
    target: Tensor
    x0: Tensor
    noise: Tensor
    info: dict[str, Any] = field(default_factory=dict)
    cond: Tensor | None = None

    @staticmethod
    def cat(parts: Sequence[TrainingPair]) -> TrainingPair:
        """Concatenate equal-sized parts along the batch; info: ``*_ms`` summed, other numbers averaged."""
        fields = ("x_t", "timesteps", "model_timesteps", "target", "x0", "noise")
        out = {f: torch.cat([getattr(p, f) for p in parts]) for f in fields}
        info: dict[str, Any] = {}
        for key in parts[0].info:
            values = [p.info[key] for p in parts if key in p.info]
            if len(values) != len(parts):
                continue
            if all(isinstance(v, Tensor) for v in values):
                info[key] = torch.stack([v.float() for v in values]).mean()
            elif all(isinstance(v, int | float) for v in values):
                info[key] = sum(values) if key.endswith("_ms") else sum(values) / len(values)
        conds = [p.cond for p in parts]
        cond = None if any(c is None for c in conds) else torch.cat(conds)
        return TrainingPair(**out, info=info, cond=cond)


def noise_generator(seed: int, rank: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, rank, step).

    Each rank gets its own stream (a shared seed on every rank would make all GPUs draw identical noise),
    and seeding per step makes a resumed run draw exactly what an uninterrupted one would have.
    """
    state = np.random.SeedSequence([int(seed), int(rank), int(step)]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(state[0]) << 31 ^ int(state[1]))
    return g


class NoisingCore:
    """Assigner + objective + pairing schedule: draws noise, pairs it, returns (x_t, t, target).

    Args:
        objective: an :class:`~immiscible_policy.objectives.Objective` (what the model predicts and how
            to sample; ``objectives.create(name, ...)`` or :func:`build_core` build one from a config), or,
            as before objectives were strategies, a diffusers ``DDPMScheduler``/``DDIMScheduler``
            (prediction types epsilon, v_prediction, sample), which is wrapped in a ``DDPMObjective``.
            :class:`RectifiedFlow` is itself an objective.
        assigner: any :class:`~immiscible_policy.assigners.base.Assigner`.
        schedule: which share of each batch is paired at an epoch
            (:class:`~immiscible_policy.pairing_schedule.PairingSchedule`; default: all rows, always).
            The trainer says which epoch a step belongs to with :meth:`set_epoch` (as
            ``DistributedSampler.set_epoch``); training and validation losses then pair alike.

    The core asks the objective for everything that depends on what the model predicts and never which
    objective it holds, so a registered plugin objective trains with every assigner unchanged.
    """

    def __init__(
        self, objective: Objective | Any, assigner: Assigner, schedule: PairingSchedule | None = None
    ) -> None:
        self.objective_impl: Objective = as_objective(objective)
        self.assigner = assigner
        self.pairing = ScheduledPairing(assigner, schedule)
        self.epoch = 0

    @property
    def objective(self) -> str:
        """What the model learns to predict, by its registered name: ``epsilon``, ``v_prediction``,
        ``sample`` (the DDPM scheduler's prediction type), ``flow`` (rectified flow's velocity) or a
        plugin's; ``trainer.objective`` in the configs. The object itself is :attr:`objective_impl`."""
        return self.objective_impl.name

    @property
    def prediction_type(self) -> str:
        """Deprecated alias of :attr:`objective` (its name before both trainers said ``objective``)."""
        warnings.warn(
            "NoisingCore.prediction_type is deprecated; use NoisingCore.objective",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.objective

    @property
    def schedule(self) -> PairingSchedule:
        """The pairing schedule (:attr:`pairing` holds it with the assigner)."""
        return self.pairing.schedule

    def set_epoch(self, epoch: int) -> None:
        """The 0-based epoch the next steps belong to (it decides the paired share)."""
        self.epoch = int(epoch)

    @property
    def paired_share(self) -> float:
        """The share of each batch the assigner pairs at the current epoch (0 = vanilla)."""
        return self.schedule.share(self.epoch)

    def draw_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """(B,) timesteps as the objective draws them (uniform integers in [0, T) for DDPM, uniform
        floats in [0, 1) for flow)."""
        return self.objective_impl.draw_timesteps(batch, device, generator)

    def training_pair(
        self,
        x0: Tensor,
        generator: torch.Generator | None = None,
        timesteps: Tensor | None = None,
        cond: Tensor | None = None,
        groups: Tensor | None = None,
    ) -> TrainingPair:
        """Build one step's training pair from a clean (normalised) batch ``x0`` (B, ...).

        ``cond`` (B, ...) is what the model is conditioned on (a policy's flattened normalised
        observation history, an image model's class labels). It reaches the assigner only when the
        assigner declares ``uses_cond``, so strategies written against ``pair(x0, noise, *, generator)``
        keep working; one that declares it and gets ``cond=None`` fails with one line. ``groups`` (B,)
        integer labels (neighbour batches, policy/neighbour_batches.py) replace ``cond`` as what such an
        assigner pairs within; the training pair keeps ``cond`` (the condition-leak diagnostic's).
        """
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        start = time.perf_counter()
        within = cond if groups is None else groups
        pairing = self.pairing.pair(x0, noise, epoch=self.epoch, generator=generator, cond=within)
        assign_ms = (time.perf_counter() - start) * 1e3
        if timesteps is None:
            timesteps = self.draw_timesteps(x0.shape[0], x0.device, generator)
        px0, pnoise = pairing.x0, pairing.noise
        objective = self.objective_impl
        x_t = objective.add_noise(px0, pnoise, timesteps)
        target = objective.target(px0, pnoise, timesteps)
        model_t = objective.model_timesteps(timesteps)
        info = dict(pairing.info)
        info["assign_ms"] = assign_ms
        return TrainingPair(x_t, timesteps, model_t, target, px0, pnoise, info, cond)

    def sharded_training_pair(
        self,
        x0: Tensor,
        generators: Sequence[torch.Generator],
        cond: Tensor | None = None,
        groups: Tensor | None = None,
    ) -> TrainingPair:
        """The training pair of a batch made of ``len(generators)`` equal rank slices, concatenated.

        Slice r of ``x0`` (and of ``cond`` and ``groups``) gets its noise, its assigner draws and its
        timesteps from ``generators[r]`` and is paired on its own: exactly what rank r of a multi-process
        run computes for its per-rank batch (``distributed: local``). With one generator this is
        :meth:`training_pair`.
        """
        if len(generators) == 1:
            return self.training_pair(x0, generators[0], cond=cond, groups=groups)
        if x0.shape[0] % len(generators):
            raise ValueError(
                f"batch of {x0.shape[0]} does not split into {len(generators)} equal rank slices."
            )
        n = len(generators)
        slices = x0.chunk(n)
        conds = [None] * n if cond is None else cond.chunk(n)
        labels = [None] * n if groups is None else groups.chunk(n)
        parts = [
            self.training_pair(x, g, cond=c, groups=lab)
            for x, g, c, lab in zip(slices, generators, conds, labels)
        ]
        return TrainingPair.cat(parts)

    def timestep_fraction(self, timesteps: Tensor) -> Tensor:
        """Timesteps mapped to [0, 1) (noise level order), for per-bucket loss analysis."""
        return self.objective_impl.timestep_fraction(timesteps)

    def bucket_losses(self, per_sample_loss: Tensor, timesteps: Tensor, n_buckets: int = 10) -> Tensor:
        """(n_buckets,) mean loss per timestep bucket (NaN for empty buckets), on the loss's device."""
        idx = (self.timestep_fraction(timesteps) * n_buckets).long().clamp_(0, n_buckets - 1)
        sums = torch.zeros(n_buckets, device=per_sample_loss.device).index_add_(
            0, idx, per_sample_loss.detach().float()
        )
        counts = torch.zeros_like(sums).index_add_(0, idx, torch.ones_like(idx, dtype=sums.dtype))
        return sums / counts  # (index_add, not bincount: bincount syncs with the host on CUDA)

    def decode(self, x0: Tensor) -> Tensor:
        """Undo the assigner's data-space transform on a generated sample."""
        return self.assigner.decode(x0)

    @torch.no_grad()
    def sample(
        self,
        model_fn: Callable[[Tensor, Tensor], Tensor],
        shape: tuple[int, ...],
        *,
        num_inference_steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Generate (shape) samples: x_T ~ N(0, I) -> the objective's sampler -> assigner.decode.

        ``model_fn(x_t, model_timesteps)`` returns the model prediction for a batch. ``sampler`` is one
        the objective accepts ("ddim" or "ddpm" for the DDPM family, "euler" or "heun" for rectified
        flow; None or "auto": its default, ddim for the DDPM family); one that does not fit the
        objective is a one-line error (never a silent substitution). ``noise`` replaces the x_T draw.
        """
        objective = self.objective_impl
        sampler = objective.resolve_sampler(self.objective, sampler, "ddim")
        steps = None if num_inference_steps is None else int(num_inference_steps)
        if steps is not None and steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}.")
        x = (
            noise
            if noise is not None
            else torch.randn(shape, generator=generator, device=device, dtype=dtype)
        )
        x = objective.sample(
            model_fn,
            x,
            num_inference_steps=steps,
            sampler=sampler,
            generator=generator,
            data_range=self.assigner.data_range,
        )
        return self.decode(x)


@torch.no_grad()
def noise_stats(x0: Tensor, noise: Tensor) -> dict[str, Tensor]:
    """What pairing did to the noise the model trains on (0-d tensors, no host sync).

    * ``noise_norm_ratio``: mean ||noise|| / sqrt(D) (1 for N(0, I) in high D; < 1 means shortened noise);
    * ``noise_proj_x0``: mean <noise, x0/||x0||> (0 for independent noise; > 0 means biased towards x0);
    * ``pair_l2``: mean per-sample ||x0 - noise||.
    At inference the sampler starts from exactly N(0, I), so a strategy that moves these away from
    (1, 0) trains the model on a noise distribution it never meets at test time.
    """
    xf, nf = x0.flatten(1).float(), noise.flatten(1).float()
    d = xf.shape[1]
    unit = xf / xf.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return {
        "noise_norm_ratio": (nf.norm(dim=1) / d**0.5).mean(),
        "noise_proj_x0": (nf * unit).sum(1).mean(),
        "pair_l2": (xf - nf).norm(dim=1).mean(),
    }


#: ``trainer.objective``'s name in configs and checkpoints written before it existed (policy trainer)
LEGACY_OBJECTIVE_KEY = "prediction_type"


def trainer_objective(tr: Any) -> str:
    """``trainer.objective`` (``epsilon`` when unset); configs and checkpoints written before it existed
    named it ``trainer.prediction_type``, which is read when ``objective`` is absent. The one place that
    knows the former name, with :func:`rename_legacy_objective`.

    Any registered objective (built-in, entry-point plugin, in-process registration) or ``module:Class``
    path is accepted; another name is the registry's one-line "did you mean" error
    (:class:`~immiscible_policy.objectives.UnknownObjectiveError`, a ValueError). Nothing is imported:
    a config is checked before anything is built.
    """
    value = tr.get("objective")
    value = str(tr.get(LEGACY_OBJECTIVE_KEY, "epsilon") if value is None else value)
    objectives.check_name(value)
    return value


def rename_legacy_objective(cfg: Any) -> Any:
    """``cfg`` (a run config: OmegaConf or dict) with a legacy ``trainer.prediction_type`` renamed to
    ``trainer.objective`` (value from :func:`trainer_objective`), in place; returns ``cfg``.

    The trainers and the checkpoint loaders call it, so everything downstream (records, checkpoints,
    eval, analyses) sees ``objective`` only; an old config or checkpoint trains and evaluates as before.
    """
    tr = cfg.get("trainer") if hasattr(cfg, "get") else None
    if tr is None or LEGACY_OBJECTIVE_KEY not in tr:
        return cfg
    objective = trainer_objective(tr)
    if isinstance(tr, dict):
        tr.pop(LEGACY_OBJECTIVE_KEY)
        tr["objective"] = objective
        return cfg
    from omegaconf import open_dict

    with open_dict(tr):
        tr.pop(LEGACY_OBJECTIVE_KEY)
        tr.objective = objective
    return cfg


def build_scheduler(
    objective: str, *, num_train_timesteps: int, beta_schedule: str, params: Mapping[str, Any] | None = None
) -> Objective:
    """The objective named ``objective`` (:func:`immiscible_policy.objectives.create`), which
    :class:`NoisingCore` takes; for the built-ins what this built before objectives were strategies,
    diffusers' DDPM (clip_sample) inside a ``DDPMObjective``, or :class:`RectifiedFlow`.

    Flow timesteps t in [0, 1] are fed to the model as t x ``num_train_timesteps`` so one network
    config serves both (its timestep embedding sees the same range).
    """
    return objectives.create(
        objective, num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, params=params
    )


def build_core(tr: Any, assigner_cfg: Any) -> NoisingCore:
    """The noising core of a trainer config (``objective``, ``num_train_timesteps``, ``beta_schedule``)
    with the configured assigner and its pairing schedule (``assigner.start_epoch`` / ``fraction`` /
    ``ramp_epochs``); used by both trainers, eval, sampling and analysis."""
    from immiscible_policy.registry import create_from_config

    objective = build_scheduler(
        trainer_objective(tr),
        num_train_timesteps=int(tr.num_train_timesteps),
        beta_schedule=str(tr.beta_schedule),
        params=objective_params(tr),
    )
    return NoisingCore(objective, create_from_config(assigner_cfg), PairingSchedule.from_config(assigner_cfg))


def objective_params(tr: Any) -> dict[str, Any]:
    """``trainer.objective_params`` as a plain dict (absent or null: none; runs recorded before it existed
    have none)."""
    from omegaconf import DictConfig, OmegaConf

    params = tr.get("objective_params")
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    return dict(params or {})


def resolve_sampler(objective: str, sampler: str | None, diffusion_default: str = "ddim") -> str:
    """The sampler ``trainer.sampler`` means for the objective named ``objective`` (any registered one):
    ``auto``/None -> ``diffusion_default`` (ddim or ddpm) when the objective accepts it, else its own
    default (euler for flow); a sampler that does not fit the objective is a one-line error, and so is
    an unknown objective (the registry's "did you mean")."""
    return objectives.get_class(objective).resolve_sampler(objective, sampler, diffusion_default)


def condition_leak(cond: Tensor, noise: Tensor, *, holdout: float = 0.25, ridge: float = 1e-2) -> float:
    """Held-out R^2 of a ridge regression predicting the paired noise from the condition.

    The train/test mismatch in one number: at inference the sampler draws x_T ~ N(0, I) whatever the
    condition, so noise that can be predicted from the condition (R^2 > 0) is a prior the model never
    meets. Independent noise gives ~0 (slightly below: the fit's own variance). Labels (integer
    ``cond``) are one-hot encoded; the first ``1 - holdout`` of the rows fit, the rest score.
    R^2 = 1 - SSE / SST summed over all noise dimensions (SST around the fitting rows' mean).
    """
    n = cond.shape[0]
    if n < 8:
        raise ValueError(f"condition_leak needs at least 8 rows, got {n}.")
    c = cond.reshape(n, -1)
    if not c.is_floating_point():
        labels = torch.unique(c[:, 0], return_inverse=True)[1]
        c = torch.nn.functional.one_hot(labels, int(labels.max()) + 1)
    x, y = c.double(), noise.reshape(n, -1).double()
    k = max(1, int(round(n * (1 - holdout))))
    xm, ym = x[:k].mean(0), y[:k].mean(0)
    xs = x[:k].std(0).clamp_min(1e-8)
    xt, yt = (x[:k] - xm) / xs, y[:k] - ym
    gram = xt.T @ xt + ridge * k * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    w = torch.linalg.solve(gram, xt.T @ yt)
    pred = ((x[k:] - xm) / xs) @ w + ym
    sse = (y[k:] - pred).pow(2).sum()
    sst = (y[k:] - ym).pow(2).sum().clamp_min(1e-12)
    return float(1.0 - sse / sst)
