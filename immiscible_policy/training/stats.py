"""Step statistics: running means over the steps behind each logged record.

Why its own module: both trainers log the same numbers (loss, noise statistics, assigner time, the
pairing share, per-timestep-bucket loss, condition leak) and the hot path must not sync the host every
step; the accumulation lives here, apart from the run's bookkeeping, so the step loop only calls ``add``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from immiscible_policy.noising import NoisingCore, TrainingPair, condition_leak, noise_stats


class StepStats:
    """Running means over logged steps: loss, noise statistics, assigner time, per-timestep-bucket loss.

    ``add`` keeps everything on the device (no host sync per step: the GPU never waits for Python);
    ``summary()`` moves the sums to the host once per logged record, summed over processes first when
    given ``reduce`` (:meth:`immiscible_policy.parallel.Topology.sum`), and returns ``train_loss``,
    ``noise_norm_ratio``, ``noise_proj_x0``, ``pair_l2``, ``assign_ms``, ``paired_share`` and ``loss_t0..loss_t{n-1}`` and
    resets. For a conditional model it also reports ``condition_leak`` (held-out R^2 of the paired
    noise regressed on the condition, :func:`~immiscible_policy.noising.condition_leak`) over the last
    ``leak_rows`` (condition, noise) rows of this process. Sums are float64 (float32 on MPS), the same
    numbers the former per-step ``.item()`` gave.
    """

    KEYS = ("loss", "noise_norm_ratio", "noise_proj_x0", "pair_l2")

    def __init__(self, n_buckets: int, device: torch.device, leak_rows: int = 4096) -> None:
        self.n_buckets, self.device = int(n_buckets), device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.leak_rows = int(leak_rows)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.assign_ms = 0.0
        self.paired_share = 0.0
        self.sums = torch.zeros(len(self.KEYS), dtype=self.dtype, device=self.device)
        self.buckets = torch.zeros(self.n_buckets, device=self.device)
        self.bucket_n = torch.zeros_like(self.buckets)
        self.leak_cond: list[Tensor] = []
        self.leak_noise: list[Tensor] = []

    def _keep_leak_rows(self, cond: Tensor, noise: Tensor) -> None:
        """Remember the newest ``leak_rows`` (condition, paired noise) rows (views, trimmed when full)."""
        self.leak_cond.append(cond.detach())
        self.leak_noise.append(noise.detach().flatten(1))
        while sum(c.shape[0] for c in self.leak_cond[1:]) >= self.leak_rows:
            self.leak_cond.pop(0)
            self.leak_noise.pop(0)

    def add(self, loss: Tensor, per_sample: Tensor, tp: TrainingPair, core: NoisingCore) -> Tensor:
        """Accumulate one step; returns the step's loss (a detached device tensor, no host sync).

        The pair's conditions (``tp.cond``), when the model has any, feed the condition-leak diagnostic."""
        if tp.cond is not None and self.leak_rows:
            self._keep_leak_rows(tp.cond, tp.noise)
        b = core.bucket_losses(per_sample, tp.timesteps, self.n_buckets)
        seen = ~torch.isnan(b)
        self.buckets += torch.where(seen, b, 0.0)
        self.bucket_n += seen.float()
        stats = noise_stats(tp.x0, tp.noise)
        value = loss.detach()
        row = torch.stack([value.float(), *(stats[k].float() for k in self.KEYS[1:])]).to(self.dtype)
        self.sums += row
        self.assign_ms += tp.info["assign_ms"]
        self.paired_share += float(tp.info.get("paired_share", 1.0))
        self.n += 1
        return value

    def summary(self, reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """Means since the last summary (over processes too when ``reduce`` sums across them)."""
        extra = torch.tensor(
            [self.assign_ms, self.paired_share, self.n], dtype=self.dtype, device=self.device
        )
        packed = torch.cat([self.sums, extra, self.buckets.to(self.dtype), self.bucket_n.to(self.dtype)])
        if reduce is not None:
            packed = reduce(packed)
        k = len(self.KEYS)
        sums, (assign_ms, paired, n) = packed[:k].tolist(), packed[k : k + 3].tolist()
        buckets = packed[k + 3 : k + 3 + self.n_buckets].float()
        bucket_n = packed[k + 3 + self.n_buckets :].float()
        n = max(n, 1)
        out = {"train_loss": sums[0] / n}
        out.update({key: sums[j] / n for j, key in enumerate(self.KEYS) if key != "loss"})
        out["assign_ms"] = assign_ms / n
        out["paired_share"] = paired / n  # the pairing schedule's share of each batch (1 = all rows)
        means = (buckets / bucket_n.clamp_min(1)).tolist()
        out.update({f"loss_t{j}": float(v) for j, v in enumerate(means)})
        if self.leak_cond and sum(c.shape[0] for c in self.leak_cond) >= 64:
            out["condition_leak"] = condition_leak(
                torch.cat(self.leak_cond)[-self.leak_rows :], torch.cat(self.leak_noise)[-self.leak_rows :]
            )
        self.reset()
        return out
