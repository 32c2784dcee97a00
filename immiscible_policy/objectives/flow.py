"""Rectified flow / flow matching (``trainer.objective=flow``): straight paths, velocity target.

``x_t = (1 - t) x0 + t noise`` with t ~ U[0, 1), target ``noise - x0``; sampling integrates
dx/dt = v from t = 1 (noise) to t = 0 with Euler or Heun steps. The same loops serve training-time
sampling and the inversion analysis, so the map the analysis inverts is the one users sample with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from immiscible_policy.objectives.base import ModelFn, Objective, broadcast, refuse_params


class RectifiedFlow(Objective):
    """Rectified flow / flow matching: ``x_t = (1 - t) x0 + t noise``, target ``noise - x0``, t in [0, 1].

    Sampling integrates dx/dt = v from t=1 (noise) to t=0 with Euler (or Heun) steps. Timesteps are
    floats, which a diffusers UNet accepts; they are fed to the model as t x ``timestep_scale`` (the
    trainers use ``num_train_timesteps``) so one network config serves DDPM and flow alike (its
    timestep embedding sees the same range).
    """

    name = "flow"
    names = ("flow",)
    samplers = ("euler", "heun")
    objective = "flow"  # its name before objectives were strategies (NoisingCore.objective's value)
    prediction_type = objective  # its former name, as diffusers' schedulers call theirs
    default_steps = 50  # num_inference_steps=None

    def __init__(self, timestep_scale: float = 1000.0) -> None:
        self.timestep_scale = float(timestep_scale)

    @classmethod
    def from_trainer(
        cls, name: str, *, num_train_timesteps: int, beta_schedule: str, **params: Any
    ) -> RectifiedFlow:
        """Flow has no noise schedule (``beta_schedule`` is unused); ``num_train_timesteps`` scales t; no
        ``trainer.objective_params`` (refused rather than ignored)."""
        refuse_params(name, params)
        return cls(timestep_scale=float(num_train_timesteps))

    def draw_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        return torch.rand(batch, device=device, generator=generator)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        tt = broadcast(t, x0)
        return (1.0 - tt) * x0 + tt * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return noise - x0

    def model_timesteps(self, t: Tensor) -> Tensor:
        return t * self.timestep_scale

    def timestep_fraction(self, t: Tensor) -> Tensor:
        return t.float()

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
        """Euler or Heun (deterministic: ``generator`` and ``data_range`` are unused, nothing is clipped)."""
        integrate = {"euler": euler_sample, "heun": heun_sample}[self.resolve_sampler(self.name, sampler)]
        return integrate(model_fn, noise, num_inference_steps or self.default_steps, self.timestep_scale)

    def sample_deterministic(self, model_fn: ModelFn, noise: Tensor, steps: int) -> Tensor:
        return euler_sample(model_fn, noise, steps, self.timestep_scale)

    def invert(self, model_fn: ModelFn, sample: Tensor, steps: int, *, fixed_point_iters: int = 0) -> Tensor:
        """:func:`euler_invert` (``fixed_point_iters`` does not apply: Euler inversion takes v at the
        step's own t)."""
        return euler_invert(model_fn, sample, steps, self.timestep_scale)

    def __repr__(self) -> str:
        return f"RectifiedFlow(timestep_scale={self.timestep_scale})"


@torch.no_grad()
def euler_sample(
    velocity_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int, timestep_scale: float
) -> Tensor:
    """Rectified flow: integrate dx/dt = v from t = 1 (noise) to t = 0 with ``steps`` Euler steps.

    ``velocity_fn`` gets model timesteps (t x ``timestep_scale``). One loop serves the sampler above and
    the analysis' inversion round trip, so the map the analysis inverts is the one users sample with.
    """
    ts = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    x = noise
    for i in range(steps):
        x = x + (ts[i + 1] - ts[i]) * velocity_fn(x, ts[i].expand(x.shape[0]) * timestep_scale)
    return x


@torch.no_grad()
def heun_sample(
    velocity_fn: Callable[[Tensor, Tensor], Tensor], noise: Tensor, steps: int, timestep_scale: float
) -> Tensor:
    """Rectified flow with Heun's second-order steps (2 model calls per step, the last step Euler).

    Same time grid as :func:`euler_sample`; ``steps`` Heun steps cost ``2 * steps - 1`` evaluations.
    """
    ts = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    x = noise
    for i in range(steps):
        dt = ts[i + 1] - ts[i]
        v = velocity_fn(x, ts[i].expand(x.shape[0]) * timestep_scale)
        x_euler = x + dt * v
        if i == steps - 1:  # t = 0 ends the path: no second evaluation there (as EDM's Heun)
            x = x_euler
            continue
        v2 = velocity_fn(x_euler, ts[i + 1].expand(x.shape[0]) * timestep_scale)
        x = x + dt * 0.5 * (v + v2)
    return x


@torch.no_grad()
def euler_invert(
    velocity_fn: Callable[[Tensor, Tensor], Tensor], x0: Tensor, steps: int, timestep_scale: float
) -> Tensor:
    """The Euler steps of :func:`euler_sample` undone in reverse order (v taken at the step's own t)."""
    ts = torch.linspace(1.0, 0.0, steps + 1, device=x0.device)
    x = x0
    for i in reversed(range(steps)):
        x = x - (ts[i + 1] - ts[i]) * velocity_fn(x, ts[i].expand(x.shape[0]) * timestep_scale)
    return x
