"""Scheduled pairing: a strategy plus its pairing schedule, and the three-line API for other trainers.

The noising core pairs every training batch through :class:`ScheduledPairing`; someone else's training
loop (Diffusion Policy, DP3, a plain diffusers loop) gets the same pairing from :func:`pair_noise` or a
:class:`NoisePairer`, without our trainers::

    from immiscible_policy import NoisePairer
    pairer = NoisePairer("linear", standardize=True, start_epoch=50)      # the published recipe
    noise = pairer(actions, torch.randn_like(actions), epoch=epoch)      # then noise as usual

Only the noise changes (a permutation for ``linear`` / ``c2ot``; a selection for ``knn``); the caller
noises ``x0`` with it as before. Strategies that transform the data itself (``scale``) are refused here:
their samples must be decoded, which needs our sampler (use :class:`~immiscible_policy.noising.NoisingCore`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from immiscible_policy.assigners.base import Assigner, Pairing
from immiscible_policy.pairing_schedule import PairingSchedule, check_schedule_fits

__all__ = ["NoisePairer", "ScheduledPairing", "pair_noise"]


class ScheduledPairing:
    """An assigner under a :class:`~immiscible_policy.pairing_schedule.PairingSchedule`.

    At an epoch whose share is s, ``round(s * B)`` rows are paired among themselves (a random subset drawn
    from ``generator``; all rows when s = 1, with no extra draw, so the default schedule is exactly the
    strategy alone), the other rows keep their own noise. At s = 0 the strategy is not called and nothing
    is drawn: bit-identical to ``vanilla``.
    """

    def __init__(self, assigner: Assigner, schedule: PairingSchedule | None = None) -> None:
        self.assigner = assigner
        self.schedule = schedule or PairingSchedule()
        check_schedule_fits(self.schedule, assigner)

    def pair(
        self,
        x0: Tensor,
        noise: Tensor,
        *,
        epoch: int,
        generator: torch.Generator | None = None,
        cond: Tensor | None = None,
    ) -> Pairing:
        """The pairing of a batch at 0-based ``epoch``; ``info["paired_share"]`` is the share paired."""
        uses_cond = bool(getattr(self.assigner, "uses_cond", False))
        if uses_cond and cond is None:
            raise ValueError(
                f"assigner {self.assigner.name!r} pairs noise by condition (uses_cond) but this task "
                "gives no condition: use a conditional task or an assigner without uses_cond."
            )
        batch = x0.shape[0]
        k = self.schedule.rows(self.schedule.share(epoch), batch)
        if k == batch:
            pairing = self._pair(x0, noise, generator, cond if uses_cond else None)
        elif k == 0:  # nothing drawn, nothing called: bit-identical to vanilla
            pairing = Pairing(x0=x0, noise=noise, info={})
        else:  # a random subset is paired among itself; the other rows keep their own noise
            rows = torch.randperm(batch, generator=generator, device=x0.device)[:k]
            sub_cond = cond[rows] if uses_cond else None
            sub = self._pair(x0[rows], noise[rows], generator, sub_cond)
            px0, pnoise = x0.clone(), noise.clone()
            px0[rows], pnoise[rows] = sub.x0, sub.noise
            pairing = Pairing(x0=px0, noise=pnoise, info=dict(sub.info))
        pairing.info["paired_share"] = k / batch
        return pairing

    def _pair(
        self, x0: Tensor, noise: Tensor, generator: torch.Generator | None, cond: Tensor | None
    ) -> Pairing:
        if cond is None:
            return self.assigner.pair(x0, noise, generator=generator)
        return self.assigner.pair(x0, noise, generator=generator, cond=cond)


class NoisePairer:
    """A named strategy (any registered name, options as keywords) under a schedule, for any trainer.

    ``NoisePairer("linear", standardize=True, start_epoch=50)(x0, noise, epoch=e)`` returns the paired
    noise (B, ...). Schedule keywords: ``start_epoch``, ``fraction``, ``ramp_epochs`` (defaults 0, 1.0, 0);
    every other keyword is the strategy's option. ``epoch`` may be computed from a step count by the
    caller (``step // steps_per_epoch``).
    """

    def __init__(
        self,
        strategy: str = "linear",
        *,
        start_epoch: int = 0,
        fraction: float = 1.0,
        ramp_epochs: int = 0,
        **options: Any,
    ) -> None:
        from immiscible_policy.registry import create

        assigner = create(strategy, **options)
        if type(assigner).decode is not Assigner.decode:
            raise ValueError(
                f"strategy {strategy!r} transforms the data, not only the noise: its samples must be decoded, "
                "so use it through immiscible_policy.noising.NoisingCore (or pick linear, c2ot, knn, ...)."
            )
        schedule = PairingSchedule(start_epoch=start_epoch, fraction=fraction, ramp_epochs=ramp_epochs)
        self.scheduled = ScheduledPairing(assigner, schedule)

    @property
    def assigner(self) -> Assigner:
        return self.scheduled.assigner

    @property
    def schedule(self) -> PairingSchedule:
        return self.scheduled.schedule

    def share(self, epoch: int) -> float:
        """The share of a batch paired at ``epoch``."""
        return self.schedule.share(epoch)

    def __call__(
        self,
        x0: Tensor,
        noise: Tensor,
        *,
        epoch: int,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The noise paired with each row of ``x0`` (B, ...) at ``epoch`` (``cond`` for ``c2ot``)."""
        return self.scheduled.pair(x0, noise, epoch=epoch, generator=generator, cond=cond).noise


def pair_noise(
    x0: Tensor,
    noise: Tensor,
    *,
    epoch: int = 0,
    cond: Tensor | None = None,
    strategy: str = "linear",
    generator: torch.Generator | None = None,
    **settings: Any,
) -> Tensor:
    """One call: the noise paired with ``x0`` under ``strategy`` and schedule (``start_epoch``,
    ``fraction``, ``ramp_epochs``) at ``epoch``; other keywords are the strategy's options.

    Builds the strategy on every call (cheap); keep a :class:`NoisePairer` in a loop."""
    return NoisePairer(strategy, **settings)(x0, noise, epoch=epoch, cond=cond, generator=generator)
