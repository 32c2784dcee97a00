"""The noising core agrees exactly with diffusers for vanilla and draws timesteps independently."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from immiscible_policy import create
from immiscible_policy.noising import NoisingCore, RectifiedFlow, noise_generator


def ddpm(ptype="epsilon"):
    return DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=ptype)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("sched_cls", [DDPMScheduler, DDIMScheduler])
def test_vanilla_matches_diffusers_exactly(ptype, sched_cls):
    sched = sched_cls(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", prediction_type=ptype)
    core = NoisingCore(sched, create("vanilla"))
    x0 = torch.randn(8, 16, 2)
    tp = core.training_pair(x0, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 100, (8,), generator=g)
    assert torch.equal(tp.timesteps, t) and torch.equal(tp.noise, noise)
    assert torch.equal(tp.x_t, sched.add_noise(x0, noise, t))
    expected = {"epsilon": noise, "v_prediction": sched.get_velocity(x0, noise, t), "sample": x0}[ptype]
    assert torch.equal(tp.target, expected)


def test_assigner_pairing_feeds_add_noise():
    sched = ddpm()
    core = NoisingCore(sched, create("linear"))
    x0 = torch.randn(16, 16, 2)
    t = torch.full((16,), 50)
    tp = core.training_pair(x0, generator=torch.Generator().manual_seed(1), timesteps=t)
    assert torch.equal(tp.x_t, sched.add_noise(x0, tp.noise, t))
    assert tp.info["l2_after"] <= tp.info["l2_before"] and tp.info["assign_ms"] >= 0


def test_scale_transforms_x0_and_decode_undoes():
    core = NoisingCore(ddpm("sample"), create("scale", s=2.0))
    x0 = torch.randn(4, 3, 8, 8)
    tp = core.training_pair(x0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(tp.target, 2 * x0)
    assert torch.allclose(core.decode(tp.target), x0)


def test_rectified_flow_pair():
    core = NoisingCore(RectifiedFlow(), create("vanilla"))
    x0 = torch.randn(8, 4)
    tp = core.training_pair(x0, generator=torch.Generator().manual_seed(0))
    tt = tp.timesteps[:, None]
    assert torch.allclose(tp.x_t, (1 - tt) * x0 + tt * tp.noise)
    assert torch.allclose(tp.target, tp.noise - x0)
    assert ((tp.timesteps >= 0) & (tp.timesteps < 1)).all()
    assert torch.allclose(tp.model_timesteps, tp.timesteps * 1000)


def test_timesteps_independent_of_assigner():
    x0 = torch.randn(32, 16, 2)
    # same generator state before the draw of t -> same t for vanilla and linear (no generator use in linear)
    a = NoisingCore(ddpm(), create("vanilla")).training_pair(x0, torch.Generator().manual_seed(5))
    b = NoisingCore(ddpm(), create("linear")).training_pair(x0, torch.Generator().manual_seed(5))
    assert torch.equal(a.timesteps, b.timesteps)


def test_bucket_losses():
    core = NoisingCore(ddpm(), create("vanilla"))
    t = torch.tensor([0, 5, 10, 95, 99])
    loss = torch.tensor([1.0, 3.0, 10.0, 4.0, 6.0])
    b = core.bucket_losses(loss, t, n_buckets=10)
    assert b[0] == 2.0 and b[1] == 10.0 and b[9] == 5.0 and torch.isnan(b[5])


def test_noise_generator_streams_distinct_and_reproducible():
    a = torch.randn(8, generator=noise_generator(0, 0, 10))
    assert torch.equal(a, torch.randn(8, generator=noise_generator(0, 0, 10)))
    assert not torch.equal(a, torch.randn(8, generator=noise_generator(0, 1, 10)))
    assert not torch.equal(a, torch.randn(8, generator=noise_generator(0, 0, 11)))
    assert not torch.equal(a, torch.randn(8, generator=noise_generator(1, 0, 10)))


class Oracle(torch.nn.Module):
    """Predicts the exact noise for a single known x0, so DDIM must land on x0."""

    def __init__(self, sched, x0):
        super().__init__()
        self.sched, self.x0 = sched, x0

    def forward(self, x, t):
        ac = self.sched.alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1)))
        return (x - ac.sqrt() * self.x0) / (1 - ac).sqrt()


def test_sample_ddim_with_oracle_recovers_data_and_decodes():
    sched = ddpm()
    x0 = torch.rand(2, 16, 2) * 2 - 1
    core = NoisingCore(sched, create("scale", s=2.0))
    oracle = Oracle(sched, 2.0 * x0)  # the model lives in the scaled space
    out = core.sample(oracle, (2, 16, 2), num_inference_steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-4)


def test_bad_prediction_type_and_sampler():
    with pytest.raises(ValueError, match="sampler='plms' does not fit objective 'epsilon'"):
        NoisingCore(ddpm(), create("vanilla")).sample(lambda x, t: x, (1, 2), sampler="plms")
