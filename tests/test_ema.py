"""EMA: diffusion_policy's warm-up formula, model-state export, and exact resume through a checkpoint."""

import pytest
import torch
from diffusers.optimization import get_cosine_schedule_with_warmup

from immiscible_policy.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from immiscible_policy.ema import (
    ema_module,
    ema_resume_state,
    ema_state_dict_for_model,
    load_ema_state,
    make_ema,
    restore_ema,
)
from immiscible_policy.policy.unet1d import ConditionalUnet1D


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return ConditionalUnet1D(2, 4, diffusion_step_embed_dim=16, down_dims=(8, 16))


def test_decay_follows_warmup_formula():
    ema = make_ema(torch.nn.Linear(2, 2))
    assert ema.get_decay(1) == 0.0  # copies the weights at first
    for n in (2, 10, 1000):
        s = n - 1
        assert ema.get_decay(n) == pytest.approx(1 - (1 + s) ** -0.75)
    assert ema.get_decay(10**9) == 0.9999


def test_state_dict_for_model_and_module():
    model = _model()
    ema = make_ema(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.step(model.parameters())  # decay 0 -> copies the shifted weights
    state = ema_state_dict_for_model(ema, model)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    averaged = ema_module(ema, model)
    assert not averaged.training and not any(p.requires_grad for p in averaged.parameters())
    first = next(iter(model.state_dict()))
    assert torch.equal(averaged.state_dict()[first], state[first])
    assert not torch.equal(model.state_dict()[first], state[first])


def test_mismatched_model_is_refused():
    ema = make_ema(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="EMA has 2 tensors but the model has 4 parameters"):
        ema_state_dict_for_model(ema, torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)))


def _build():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-6)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=12)
    return model, opt, sched, make_ema(model)


def _train(model, opt, sched, ema, steps):
    for _ in range(steps):
        x, cond = torch.randn(4, 8, 2), torch.randn(4, 4)
        t = torch.randint(0, 100, (4,))
        loss = (model(x, t, cond) - x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        ema.step(model.parameters())


@pytest.mark.parametrize("ema_in", ["training_state", "safetensors"])
def test_resume_equals_uninterrupted(tmp_path, ema_in):
    torch.manual_seed(123)
    ref = _build()
    _train(*ref, 12)

    torch.manual_seed(123)
    model, opt, sched, ema = _build()
    _train(model, opt, sched, ema, 5)
    ema_state = ema.state_dict() if ema_in == "training_state" else ema_resume_state(ema)
    save_checkpoint(
        tmp_path,
        5,
        model_state=model.state_dict(),
        ema_state=ema_state_dict_for_model(ema, model),
        config={},
        training_state={
            "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(),
            "ema": ema_state,
            "rng": rng_state(),
        },
    )
    del model, opt, sched, ema
    torch.manual_seed(999)  # a fresh process would start elsewhere

    ckpt = load_checkpoint(tmp_path)
    model, opt, sched, ema = _build()
    model.load_state_dict(ckpt.model_state)
    opt.load_state_dict(ckpt.training_state["optimizer"])
    sched.load_state_dict(ckpt.training_state["lr_scheduler"])
    if ema_in == "training_state":
        load_ema_state(ema, ckpt.training_state["ema"], model=model)
    else:
        restore_ema(ema, model, resume_state=ckpt.training_state["ema"], ema_model_state=ckpt.ema_state)
    set_rng_state(ckpt.training_state["rng"])
    _train(model, opt, sched, ema, 7)

    ref_model, _, ref_sched, ref_ema = ref
    assert sched.get_last_lr() == ref_sched.get_last_lr()
    assert ema.optimization_step == ref_ema.optimization_step == 12
    for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(a, b), name
    got, want = ema_state_dict_for_model(ema, model), ema_state_dict_for_model(ref_ema, ref_model)
    for name in want:
        assert torch.equal(got[name], want[name]), name
