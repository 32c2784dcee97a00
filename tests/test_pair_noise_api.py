"""The three-line API for someone else's trainer: ``NoisePairer`` / ``pair_noise`` inside a plain diffusers
``DDPMScheduler`` training loop written here, with the schedule."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from immiscible_policy import NoisePairer, pair_noise


def test_inside_a_plain_diffusers_training_loop():
    torch.manual_seed(0)
    scheduler = DDPMScheduler(num_train_timesteps=100)
    net = torch.nn.Sequential(torch.nn.Linear(16 + 1, 64), torch.nn.SiLU(), torch.nn.Linear(64, 16))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    data = torch.randn(512, 8, 2) * 0.5 + torch.tensor([1.0, -1.0])
    pairer = NoisePairer("linear", standardize=True, start_epoch=1)  # the published recipe, warm-up 1
    losses, moved = [], []
    for epoch in range(3):
        for batch in data.split(128):
            drawn = torch.randn_like(batch)
            noise = pairer(batch, drawn, epoch=epoch)  # <- the one added line
            moved.append(not torch.equal(noise, drawn))
            assert sorted(noise.flatten().tolist()) == sorted(drawn.flatten().tolist())  # a permutation
            t = torch.randint(0, 100, (len(batch),))
            x_t = scheduler.add_noise(batch, noise, t)
            pred = net(torch.cat([x_t.flatten(1), t[:, None].float() / 100], 1)).view_as(batch)
            loss = torch.nn.functional.mse_loss(pred, noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert moved == [False] * 4 + [True] * 8  # vanilla during the warm-up epoch, paired after
    assert all(torch.isfinite(torch.tensor(losses)))
    assert pairer.share(0) == 0.0 and pairer.share(1) == 1.0


def test_pair_noise_one_call_reduces_the_distance_and_respects_the_fraction():
    x0, drawn = torch.randn(64, 16, 2), torch.randn(64, 16, 2)
    paired = pair_noise(x0, drawn, epoch=0, strategy="linear")
    assert (x0 - paired).flatten(1).norm(dim=1).sum() < (x0 - drawn).flatten(1).norm(dim=1).sum()
    half = pair_noise(
        x0, drawn, epoch=0, strategy="linear", fraction=0.5, generator=torch.Generator().manual_seed(0)
    )
    kept = (half == drawn).flatten(1).all(1).sum().item()
    assert kept >= 32  # the unpaired half keeps its own noise (a paired row may keep its own by chance)
    assert torch.equal(pair_noise(x0, drawn, epoch=4, strategy="knn", start_epoch=5), drawn)


def test_c2ot_takes_the_condition_and_errors_are_one_line():
    x0, drawn, labels = torch.randn(32, 4, 2), torch.randn(32, 4, 2), torch.arange(32) % 2
    out = pair_noise(x0, drawn, cond=labels, strategy="c2ot")
    for i in range(32):  # labels pair only within a label
        j = next(j for j in range(32) if torch.equal(drawn[j], out[i]))
        assert labels[i] == labels[j]
    with pytest.raises(ValueError, match=r"^assigner 'c2ot' pairs noise by condition .* gives no condition"):
        pair_noise(x0, drawn, strategy="c2ot")
    with pytest.raises(ValueError, match=r"^strategy 'scale' transforms the data, not only the noise"):
        NoisePairer("scale")
    with pytest.raises(ValueError, match=r"^assigner\.fraction=2: use a number in \[0, 1\]"):
        NoisePairer("linear", fraction=2)
    with pytest.raises(Exception, match=r"Unknown assigner 'linaer'. Did you mean 'linear'\?"):
        NoisePairer("linaer")
