"""ConditionalUnet1D: shapes, timestep forms, gradient flow, FiLM sensitivity, error text."""

import pytest
import torch

from immiscible_policy.policy.embeddings import SinusoidalPosEmb
from immiscible_policy.policy.unet1d import ConditionalUnet1D


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("input_dim", "cond_dim", "down_dims", "horizon", "kernel", "scale"),
    [
        (2, 40, (64, 128, 256), 16, 5, True),
        (2, 40, (64, 128, 256), 32, 3, False),
        (7, 10, (32, 64), 10, 5, True),
        (3, 0, (16,), 7, 3, True),
        (2, 20, (16, 32, 64, 128), 24, 5, True),
    ],
)
def test_output_shape(input_dim, cond_dim, down_dims, horizon, kernel, scale):
    torch.manual_seed(0)
    model = ConditionalUnet1D(
        input_dim,
        cond_dim,
        diffusion_step_embed_dim=32,
        down_dims=down_dims,
        kernel_size=kernel,
        cond_predict_scale=scale,
    )
    x = torch.randn(3, horizon, input_dim)
    cond = torch.randn(3, cond_dim) if cond_dim else None
    out = model(x, torch.tensor([0, 5, 99]), cond)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_timestep_forms_agree():
    torch.manual_seed(0)
    model = ConditionalUnet1D(2, 8, diffusion_step_embed_dim=32, down_dims=(16, 32)).eval()
    x, cond = torch.randn(4, 16, 2), torch.randn(4, 8)
    ref = model(x, torch.full((4,), 17), cond)
    assert torch.equal(model(x, 17, cond), ref)
    assert torch.equal(model(x, torch.tensor(17), cond), ref)
    assert not torch.allclose(model(x, 18, cond), ref)


def test_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    model = ConditionalUnet1D(2, 12, diffusion_step_embed_dim=32, down_dims=(16, 32, 64))
    out = model(torch.randn(2, 16, 2), torch.tensor([3, 40]), torch.randn(2, 12))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("scale", [True, False])
def test_global_cond_changes_output(scale):
    torch.manual_seed(0)
    model = ConditionalUnet1D(2, 6, diffusion_step_embed_dim=32, down_dims=(16, 32), cond_predict_scale=scale)
    x = torch.randn(2, 8, 2)
    a = model(x, 10, torch.zeros(2, 6))
    b = model(x, 10, torch.ones(2, 6))
    assert (a - b).abs().max() > 1e-4
    # Each sample only sees its own cond: changing row 1 leaves row 0 alone.
    cond = torch.zeros(2, 6)
    cond[1] = 1.0
    c = model(x, 10, cond)
    assert torch.allclose(c[0], a[0], atol=1e-6)
    assert torch.allclose(c[1], b[1], atol=1e-6)


def test_param_counts_match_diffusion_policy_sizes():
    # CPU default: ~4.56M; diffusion_policy's paper config (65.8M in the paper).
    assert _n_params(ConditionalUnet1D(2, 40)) == 4_559_554
    paper = ConditionalUnet1D(2, 40, diffusion_step_embed_dim=256, down_dims=(256, 512, 1024), kernel_size=5)
    assert _n_params(paper) == 65_783_298


def test_bad_horizon_error():
    model = ConditionalUnet1D(2, 4, diffusion_step_embed_dim=32, down_dims=(16, 32, 64))
    with pytest.raises(ValueError, match=r"horizon T=10 must be divisible by 4"):
        model(torch.randn(1, 10, 2), 0, torch.zeros(1, 4))


def test_bad_inputs_errors():
    model = ConditionalUnet1D(2, 4, diffusion_step_embed_dim=32, down_dims=(16, 32))
    with pytest.raises(ValueError, match=r"sample must be \(B, T, 2\)"):
        model(torch.randn(1, 8, 3), 0, torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"global_cond must be \(1, 4\), got \(1, 5\)"):
        model(torch.randn(1, 8, 2), 0, torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"global_cond must be \(1, 4\), got None"):
        model(torch.randn(1, 8, 2), 0)
    with pytest.raises(ValueError, match=r"timestep must be a scalar or shape \(1,\)"):
        model(torch.randn(1, 8, 2), torch.zeros(3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"n_groups=8 must divide"):
        ConditionalUnet1D(2, 4, down_dims=(12, 32))
    with pytest.raises(ValueError, match=r"kernel_size must be odd"):
        ConditionalUnet1D(2, 4, kernel_size=4)


def test_sinusoidal_embedding():
    emb = SinusoidalPosEmb(8)(torch.tensor([0.0, 1.0, 2.5]))
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert torch.allclose(emb.square()[:, :4] + emb.square()[:, 4:], torch.ones(3, 4))
    with pytest.raises(ValueError, match="even"):
        SinusoidalPosEmb(7)
