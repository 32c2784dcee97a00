"""The noising core's device path: bf16 end to end, and no host sync per step on CUDA.

A host sync (``.item()``, ``nonzero``, a blocking copy) makes the CPU wait for the GPU every step, which
idles the GPU while Python prepares the next step. Every built-in except ``linear`` (whose solver needs
the cost matrix on the host, by design) must build a training pair and its logged statistics with
``torch.cuda.set_sync_debug_mode("error")`` on, which turns any sync into an exception.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from immiscible_policy import create
from immiscible_policy.noising import NoisingCore, noise_generator
from immiscible_policy.training import StepStats

SYNC_FREE = ["vanilla", "knn", "knn-pool", "scale"]


def _step(core: NoisingCore, stats: StepStats, x0: torch.Tensor, step: int):
    tp = core.training_pair(x0, noise_generator(0, 0, step, x0.device))
    per_sample = (tp.x_t.float() - tp.target.float()).pow(2).flatten(1).mean(1)
    stats.add(per_sample.mean(), per_sample, tp, core)
    return tp


@pytest.mark.parametrize("name", [*SYNC_FREE, "linear"])
def test_bf16_batches_stay_bf16_on_cpu(name):
    core = NoisingCore(DDPMScheduler(num_train_timesteps=100), create(name))
    x0 = (torch.rand(64, 16, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1).bfloat16()
    stats = StepStats(10, x0.device)
    tp = _step(core, stats, x0, 0)
    for t in (tp.x_t, tp.noise, tp.target, tp.x0):
        assert t.dtype == torch.bfloat16 and torch.isfinite(t.float()).all()
    summary = stats.summary()
    assert 0.5 < summary["noise_norm_ratio"] < 1.5 and summary["train_loss"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", SYNC_FREE)
def test_cuda_training_pair_has_no_host_sync(name, dtype):
    device = torch.device("cuda")
    core = NoisingCore(DDPMScheduler(num_train_timesteps=100), create(name))
    x0 = (torch.rand(256, 16, 2, device=device) * 2 - 1).to(dtype)
    stats = StepStats(10, device)
    _step(core, stats, x0, 0)  # warm-up: diffusers moves its schedule to the device on the first call
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            tp = _step(core, stats, x0, step)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert tp.noise.device.type == "cuda" and tp.noise.dtype == dtype
    assert stats.summary()["train_loss"] > 0  # the one sync, at logging time


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_knn_pool_matches_cpu_matching():
    a = create("knn-pool")
    g = torch.Generator().manual_seed(0)
    x0, pool = torch.randn(128, 16, 2, generator=g), torch.randn(256, 16, 2, generator=g)
    cpu = a.match(x0, pool)
    gpu = a.match(x0.cuda(), pool.cuda()).cpu()
    assert gpu.unique().numel() == 128
    # same matching up to ties in float distances between the faiss (CPU) and torch/faiss-gpu searches
    assert (gpu == cpu).float().mean() > 0.95
