"""The DDPM family (``trainer.objective=epsilon | v_prediction | sample``): diffusers' DDPM schedule.

One class serves the three names: they share the noise schedule (``x_t = sqrt(a_t) x0 + sqrt(1 - a_t)
noise``, integer t in [0, T)), the samplers (diffusers' DDIM and DDPM) and the inversion, and differ
only in the regression target (noise, diffusers' velocity ``get_velocity``, or x0). Noising and targets
go through the diffusers scheduler itself, so with ``vanilla`` pairing a training pair equals diffusers'
``add_noise`` / ``get_velocity`` bit for bit (tests/test_noising.py).

The deterministic DDIM pair used by the inversion analysis (:func:`ddim_sample`, :func:`ddim_invert`)
lives here too: it is this family's sampler without clipping, run in both directions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from immiscible_policy.objectives.base import ModelFn, Objective, refuse_params

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class DDPMObjective(Objective):
    """Epsilon, v or x0 prediction under a diffusers ``DDPMScheduler`` / ``DDIMScheduler`` schedule.

    Args:
        scheduler: the training scheduler; its ``config.prediction_type`` is the objective's name and
            its config (schedule, clipping) is what the inference schedulers are built from. diffusers
            schedulers are used as they are (not re-implemented) because their ``add_noise`` is the seam
            the assigners act at and the reference the tests compare with.
    """

    names = PREDICTION_TYPES
    samplers = ("ddim", "ddpm")

    def __init__(self, scheduler: Any) -> None:
        ptype = scheduler.config.prediction_type
        if ptype not in PREDICTION_TYPES:
            raise ValueError(
                f"Unsupported scheduler prediction_type {ptype!r} (the objective); use one of "
                f"{', '.join(PREDICTION_TYPES)}."
            )
        self.scheduler = scheduler
        self.prediction_type = str(ptype)
        self.name = self.prediction_type
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)

    @classmethod
    def from_trainer(
        cls, name: str, *, num_train_timesteps: int, beta_schedule: str, **params: Any
    ) -> DDPMObjective:
        """diffusers' DDPM with ``clip_sample`` on (the trainers' training scheduler since the start); its
        settings are the trainer's, so ``trainer.objective_params`` is refused rather than ignored."""
        refuse_params(name, params)
        if name not in PREDICTION_TYPES:
            raise ValueError(
                f"{cls.__qualname__} serves the objectives {', '.join(PREDICTION_TYPES)}; select it by one "
                f"of those names, not {name!r}."
            )
        from diffusers import DDPMScheduler

        return cls(
            DDPMScheduler(
                num_train_timesteps=int(num_train_timesteps),
                beta_schedule=str(beta_schedule),
                clip_sample=True,
                prediction_type=name,
            )
        )

    @property
    def alphas_cumprod(self) -> Tensor:
        """(T,) the schedule's cumulative alphas (analyses read the noise levels from it)."""
        return self.scheduler.alphas_cumprod

    def draw_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        return torch.randint(0, self.num_train_timesteps, (batch,), device=device, generator=generator)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, t)
        return x0

    def timestep_fraction(self, t: Tensor) -> Tensor:
        return t.float() / self.num_train_timesteps

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        noise: Tensor,
        *,
        num_inference_steps: int | None,
        sampler: str,
        generator: torch.Generator | None = None,
        data_range: Callable[[float], float] | None = None,
    ) -> Tensor:
        """diffusers' DDIM or DDPM steps (all T of them when ``num_inference_steps`` is None), from a fresh
        scheduler built from the training config, so the training scheduler is never mutated."""
        sched = inference_scheduler(self.scheduler, self.resolve_sampler(self.name, sampler), data_range)
        sched.set_timesteps(num_inference_steps or self.num_train_timesteps, device=noise.device)
        x = noise
        for t in sched.timesteps:
            out = model_fn(x, t.expand(x.shape[0]).to(x.device))
            x = sched.step(out, t, x, generator=generator).prev_sample
        return x

    def sample_deterministic(self, model_fn: ModelFn, noise: Tensor, steps: int) -> Tensor:
        """DDIM (eta = 0, no clipping) through the model's implied epsilon (:func:`epsilon_model`)."""
        ac = self.alphas_cumprod
        return ddim_sample(epsilon_model(model_fn, self.prediction_type, ac), noise, ac, steps)

    def invert(self, model_fn: ModelFn, sample: Tensor, steps: int, *, fixed_point_iters: int = 0) -> Tensor:
        """:func:`ddim_invert` through the model's implied epsilon."""
        ac = self.alphas_cumprod
        eps_fn = epsilon_model(model_fn, self.prediction_type, ac)
        return ddim_invert(eps_fn, sample, ac, steps, fixed_point_iters)

    def __repr__(self) -> str:
        return f"DDPMObjective(name={self.name!r}, num_train_timesteps={self.num_train_timesteps})"


def inference_scheduler(
    train_scheduler: Any, sampler: str, data_range: Callable[[float], float] | None = None
) -> Any:
    """A fresh DDIM or DDPM scheduler with the training scheduler's noise schedule.

    Its ``clip_sample_range`` is widened by ``data_range`` (an assigner's
    :meth:`~immiscible_policy.assigners.base.Assigner.data_range`) so a data-space transform such as
    ``scale`` is not clipped away before ``decode``.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    overrides = {}
    if data_range is not None and "clip_sample_range" in train_scheduler.config:
        overrides["clip_sample_range"] = data_range(float(train_scheduler.config.clip_sample_range))
    if sampler == "ddim":
        return DDIMScheduler.from_config(train_scheduler.config, **overrides)
    if sampler == "ddpm":
        return DDPMScheduler.from_config(train_scheduler.config, **overrides)
    raise ValueError(f"Unknown sampler {sampler!r}; use 'ddim' or 'ddpm' (or 'euler' for rectified flow).")


def make_inference_scheduler(train_scheduler: Any, sampler: str, assigner: Any = None) -> Any:
    """:func:`inference_scheduler` with the range widened by ``assigner`` (its signature before
    objectives were strategies; the noising module re-exports it)."""
    return inference_scheduler(train_scheduler, sampler, None if assigner is None else assigner.data_range)


# ------------------------------------------------------------------ deterministic DDIM and its inversion


def ddim_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Descending timesteps, evenly spaced like diffusers' DDIM 'leading' spacing."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps={steps} must be between 1 and the {num_train_timesteps} training timesteps.")
    ratio = num_train_timesteps // steps
    return [i * ratio for i in range(steps)][::-1]


def _step(x: Tensor, eps: Tensor, a_from: float, a_to: float) -> Tensor:
    x0_hat = (x - (1 - a_from) ** 0.5 * eps) / a_from**0.5
    return a_to**0.5 * x0_hat + (1 - a_to) ** 0.5 * eps


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, noise: Tensor, alphas_cumprod: Tensor, steps: int) -> Tensor:
    """Noise (B, ...) -> sample, with an epsilon-predicting ``model_fn(x_t, t)``."""
    ts = ddim_timesteps(len(alphas_cumprod), steps)
    x = noise
    for i, t in enumerate(ts):
        a_to = float(alphas_cumprod[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        eps = model_fn(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        x = _step(x, eps, float(alphas_cumprod[t]), a_to)
    return x


@torch.no_grad()
def ddim_invert(
    model_fn: ModelFn,
    x0: Tensor,
    alphas_cumprod: Tensor,
    steps: int,
    fixed_point_iters: int = 0,
) -> Tensor:
    """Sample (B, ...) -> the noise DDIM would map to it (the same steps, run backwards).

    Plain DDIM inversion evaluates the model at the less noisy point (eps(x_{t-1}, t) stands in for
    eps(x_t, t)), an approximation that is poor where alpha_bar changes fast between steps (few steps,
    or the end of a squared-cosine schedule). ``fixed_point_iters`` > 0 refines each step by iterating
    x_t <- inverse_step(x_{t-1}, eps(x_t, t)); at its fixed point the forward DDIM step from x_t gives
    back x_{t-1} exactly, so the remaining error is the map's own non-invertibility (or non-convergence).
    """
    ts = ddim_timesteps(len(alphas_cumprod), steps)[::-1]  # ascending
    x = x0
    for i, t in enumerate(ts):
        a_from = float(alphas_cumprod[ts[i - 1]]) if i > 0 else 1.0
        a_to = float(alphas_cumprod[t])
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        prev = x
        x = _step(prev, model_fn(prev, tt), a_from, a_to)
        for _ in range(fixed_point_iters):
            x = _step(prev, model_fn(x, tt), a_from, a_to)
    return x


def epsilon_model(model_fn: ModelFn, prediction_type: str, alphas_cumprod: Tensor) -> ModelFn:
    """Wrap a model predicting ``epsilon | v_prediction | sample`` as an epsilon predictor for DDIM.

    v = sqrt(a) eps - sqrt(1 - a) x0 and x_t = sqrt(a) x0 + sqrt(1 - a) eps give
    eps = sqrt(a) v + sqrt(1 - a) x_t; an x0 prediction gives eps = (x_t - sqrt(a) x0) / sqrt(1 - a).
    """
    if prediction_type == "epsilon":
        return model_fn
    if prediction_type not in ("v_prediction", "sample"):
        raise ValueError(
            f"prediction_type {prediction_type!r} cannot be inverted with DDIM; use epsilon, v_prediction "
            "or sample (rectified flow goes through euler_invert)."
        )

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        a = alphas_cumprod.to(x.device, x.dtype)[t].reshape(-1, *[1] * (x.dim() - 1))
        out = model_fn(x, t)
        if prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * x
        return (x - a.sqrt() * out) / (1 - a).sqrt()

    return eps_fn
