"""One object per model kind: ``DiffusionPolicy`` and ``ImageDiffusion`` own their network, core and sampler.

What must hold: the object's parameters are exactly its network's (the optimiser, EMA and DDP see nothing
else) and its state dict is the checkpoint's under ``net.``; ``from_checkpoint`` returns the class and
acts / samples exactly as the former function path did on the run fixtures of tests/fixtures/main_runs
(re-implemented here from the network, the core and the normaliser, independently of the loaders); sampling
is seeded-repeatable; the loss is the trainers' and its gradients reach the network; ``with_net`` puts
another network (the EMA copy) in the same settings; an object made without a sampler samples as its
trainer's ``auto`` says; and ``from_checkpoint`` needs no module above the objects' own.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file

from immiscible_policy.checkpoint import resolve_checkpoint
from immiscible_policy.image.diffusion import ImageDiffusion, load_image_diffusion
from immiscible_policy.image.model import build_unet
from immiscible_policy.noising import build_core
from immiscible_policy.policy import DiffusionPolicy, Policy
from immiscible_policy.policy.build import build_model
from immiscible_policy.policy.load import load_policy
from immiscible_policy.policy.normalizer import MinMaxNormalizer

FIXTURE = Path(__file__).parent / "fixtures" / "main_runs"
POLICY_RUN, IMAGE_RUN = FIXTURE / "policy", FIXTURE / "image"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
PACKAGE = Path(__file__).resolve().parents[1] / "immiscible_policy"


def fixture_obs() -> torch.Tensor:
    """The observations the fixture's expected actions were recorded for (make_main_runs.policy_actions)."""
    return torch.linspace(0.0, 500.0, 2 * 2 * 20).reshape(2, 2, 20)


def step_dir(run: Path) -> Path:
    return resolve_checkpoint(run)


def recorded_cfg(run: Path):
    return OmegaConf.create(json.loads((step_dir(run) / "config.json").read_text())["cfg"])


def same_params(module: torch.nn.Module, net: torch.nn.Module) -> bool:
    return [id(p) for p in module.parameters()] == [id(p) for p in net.parameters()]


# ------------------------------------------------------------------------------------ DiffusionPolicy


@pytest.fixture(scope="module")
def policy() -> DiffusionPolicy:
    return DiffusionPolicy.from_checkpoint(POLICY_RUN, device="cpu", seed=0)


def former_policy_actions(run: Path, obs: torch.Tensor, seed: int = 0) -> np.ndarray:
    """The former ``Policy.from_checkpoint(run, seed=seed).predict_action(obs)``, from its pieces: the network
    built from the recorded config with the EMA weights, the core, the normaliser, one seeded generator."""
    cfg, ck = recorded_cfg(run), step_dir(run)
    task, tr = cfg.task, cfg.trainer
    meta = json.loads((ck / "config.json").read_text())["policy"]
    net = build_model(cfg.model, int(meta["action_dim"]), int(meta["obs_dim"]), int(task.n_obs_steps))
    net.load_state_dict(load_file(ck / "ema.safetensors"))
    core = build_core(tr, cfg.assigner)
    norm = MinMaxNormalizer.from_dict(json.loads((ck / "normalizer.json").read_text()))
    steps = int(task.n_obs_steps)
    cond = norm.normalize("obs", obs)[:, :steps].flatten(1)
    with torch.no_grad():
        traj = core.sample(
            lambda x, t: net(x, t, cond),
            (obs.shape[0], int(task.horizon), int(meta["action_dim"])),
            num_inference_steps=int(tr.num_inference_steps),
            sampler=str(tr.sampler),
            generator=torch.Generator().manual_seed(seed),
        )
    start = steps - 1
    return norm.unnormalize("action", traj)[:, start : start + int(task.n_action_steps)].numpy()


def test_policy_from_checkpoint_is_the_class_and_acts_as_the_former_path(policy):
    assert type(policy) is DiffusionPolicy and not policy.training and not policy.net.training
    obs = fixture_obs()
    got = policy.predict_action(obs)
    np.testing.assert_array_equal(got, former_policy_actions(POLICY_RUN, obs))
    np.testing.assert_allclose(got, EXPECTED["policy"]["actions"], rtol=1e-4, atol=1e-3)  # as recorded


def test_policy_parameters_and_state_dict_are_the_networks(policy):
    assert same_params(policy, policy.net) and len(list(policy.buffers())) == len(list(policy.net.buffers()))
    assert [name for name, _ in policy.named_children()] == ["net"]
    ema = load_file(step_dir(POLICY_RUN) / "ema.safetensors")
    assert policy.net.state_dict().keys() == ema.keys()
    assert list(policy.state_dict()) == [f"net.{k}" for k in policy.net.state_dict()]
    for key, value in policy.net.state_dict().items():
        assert torch.equal(value, ema[key]), key
    raw = DiffusionPolicy.from_checkpoint(POLICY_RUN, device="cpu", use_ema=False)
    model = load_file(step_dir(POLICY_RUN) / "model.safetensors")
    assert all(torch.equal(v, model[k]) for k, v in raw.net.state_dict().items())
    assert any(not torch.equal(model[k], ema[k]) for k in ema)  # negative control: the two files differ


def test_policy_samples_from_its_own_seeded_stream(policy):
    obs = fixture_obs()
    policy.reset()
    first, second = policy.predict_action(obs), policy.predict_action(obs)
    assert not np.array_equal(first, second)  # the stream goes on, as a rollout's does
    policy.reset()
    np.testing.assert_array_equal(policy.predict_action(obs), first)
    seeded = policy.predict_action(obs, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(seeded, first)  # generator= overrides, same draws as seed 0
    policy.reset()
    single = policy.predict_action(obs[0])  # (n_obs_steps, obs_dim) -> (n_action_steps, A)
    assert single.shape == (8, 2)
    np.testing.assert_array_equal(single, former_policy_actions(POLICY_RUN, obs[:1])[0])
    with pytest.raises(ValueError, match=r"obs_history must be \(2, obs_dim\) or \(n, 2, obs_dim\)"):
        policy.predict_action(np.zeros((3, 1, 20), dtype=np.float32))


def test_policy_with_net_acts_through_the_given_network(policy):
    other = copy.deepcopy(policy.net)
    view = policy.with_net(other)
    assert view.net is other and view.core is policy.core and same_params(view, other)
    obs, g = fixture_obs(), lambda: torch.Generator().manual_seed(3)
    np.testing.assert_array_equal(
        view.predict_action(obs, generator=g()), policy.predict_action(obs, generator=g())
    )
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    assert not np.array_equal(
        view.predict_action(obs, generator=g()), policy.predict_action(obs, generator=g())
    )


def test_deprecated_policy_name_loads_the_same_policy(policy):
    with pytest.warns(DeprecationWarning, match="Policy is now DiffusionPolicy"):
        old = Policy.from_checkpoint(POLICY_RUN, device="cpu", seed=0)
    assert isinstance(old, DiffusionPolicy) and old.model is old.net and old.diffusion is old
    obs = fixture_obs()
    np.testing.assert_array_equal(old.predict_action(obs), former_policy_actions(POLICY_RUN, obs))
    with pytest.warns(DeprecationWarning):
        rebuilt = Policy(policy.net, policy, 0)  # the former constructor: (model, diffusion, seed)
    assert rebuilt.net is policy.net and rebuilt.horizon == policy.horizon


def test_load_policy_returns_the_policy_with_its_run():
    loaded = load_policy(POLICY_RUN, device="cpu")
    model, policy, cfg, ck = loaded  # the former 4-tuple still unpacks
    assert model is policy.net is loaded.policy.net and cfg is loaded.cfg and ck is loaded.checkpoint
    assert ck.path == step_dir(POLICY_RUN) and cfg.task.name == recorded_cfg(POLICY_RUN).task.name


def _policy_batch(policy: DiffusionPolicy, n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "obs": torch.rand(n, policy.n_obs_steps, 20, generator=g) * 2 - 1,
        "action": torch.rand(n, policy.horizon, policy.action_dim, generator=g) * 2 - 1,
    }


def test_policy_loss_is_the_training_mse_and_differentiable_in_the_net_only():
    policy = DiffusionPolicy.from_checkpoint(POLICY_RUN, device="cpu").train()
    batch = _policy_batch(policy)
    loss, per_sample, tp = policy.loss(batch, torch.Generator().manual_seed(0))
    pred = policy.net(tp.x_t, tp.model_timesteps, policy.global_cond(batch["obs"]))
    torch.testing.assert_close(per_sample, (pred - tp.target).pow(2).flatten(1).mean(1))
    assert loss.shape == () and per_sample.shape == (6,)
    grads = torch.autograd.grad(loss, list(policy.parameters()), allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert not any(t.requires_grad for t in (*batch.values(), tp.x_t, tp.target))  # nothing else to train
    prepared = policy.prepare(batch, torch.Generator().manual_seed(0))  # trainer.pair_ahead's split
    again, _, _ = policy.loss(None, prepared=prepared)
    assert torch.equal(again.detach(), loss.detach())
    via_forward, _, _ = policy(batch, torch.Generator().manual_seed(0))  # what DDP(policy) calls
    assert torch.equal(via_forward.detach(), loss.detach())


# ------------------------------------------------------------------------------------ ImageDiffusion


@pytest.fixture(scope="module")
def image() -> ImageDiffusion:
    return ImageDiffusion.from_checkpoint(IMAGE_RUN, device="cpu", seed=0)


def former_generate(model, core, n, *, channels, image_size, steps, sampler, seed, batch_size, num_classes=0):
    """The former ``image.sampling.generate`` loop, written out: one generator for every batch in turn."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes if num_classes else None
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        lab = None if labels is None else labels[start : start + b]
        with torch.no_grad():
            x = core.sample(
                lambda x, t, lab=lab: model(x, t, class_labels=lab).sample.float(),
                (b, channels, image_size, image_size),
                num_inference_steps=steps,
                sampler=sampler,
                generator=gen,
            )
        out.append(x.clamp(-1, 1).float().cpu())
    return torch.cat(out)


def test_image_from_checkpoint_is_the_class_and_samples_as_the_former_path(image):
    assert type(image) is ImageDiffusion and not image.training
    cfg = recorded_cfg(IMAGE_RUN)
    assert (image.sampler, image.num_inference_steps) == (str(cfg.trainer.sampler), 2)
    assert (image.channels, image.image_size, image.num_classes) == (1, 16, 0)
    got = image.sample(5, seed=0, batch_size=3)
    assert got.shape == (5, 1, 16, 16) and got.abs().max() <= 1
    net = build_unet(cfg.model, image_size=16, channels=1)  # built and loaded without the loader
    net.load_state_dict(load_file(step_dir(IMAGE_RUN) / "ema.safetensors"))
    core = build_core(cfg.trainer, cfg.assigner)
    want = former_generate(
        net, core, 5, channels=1, image_size=16, steps=2, sampler="ddim", seed=0, batch_size=3
    )
    assert torch.equal(got, want)


def test_image_sampling_is_seeded_repeatable(image):
    a, b = image.sample(4, seed=0), image.sample(4, seed=0)
    assert torch.equal(a, b) and not torch.equal(a, image.sample(4, seed=1))
    image.reset()
    own, more = image.sample(4), image.sample(4)  # its own stream, seeded by seed=0, goes on
    assert torch.equal(own, a) and not torch.equal(more, a)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(image.sample(4, generator=g), a)
    assert torch.equal(image.sample(4, steps=1, seed=0), image.sample(4, 1, "ddim", seed=0))
    assert not torch.equal(image.sample(4, steps=1, seed=0), a)  # steps matter (negative control)
    with pytest.raises(ValueError, match="unconditional"):
        image.sample(2, labels=torch.tensor([0, 1]))


def test_image_parameters_and_state_dict_are_the_networks(image):
    assert same_params(image, image.net) and [n for n, _ in image.named_children()] == ["net"]
    ema = load_file(step_dir(IMAGE_RUN) / "ema.safetensors")
    assert image.net.state_dict().keys() == ema.keys()
    assert list(image.state_dict()) == [f"net.{k}" for k in image.net.state_dict()]
    assert all(torch.equal(v, ema[k]) for k, v in image.net.state_dict().items())
    diffusion, cfg, ck = load_image_diffusion(IMAGE_RUN, device="cpu", use_ema=False)
    model = load_file(ck.path / "model.safetensors")
    assert all(torch.equal(v, model[k]) for k, v in diffusion.net.state_dict().items())
    assert cfg.task.name == recorded_cfg(IMAGE_RUN).task.name


def test_image_loss_is_the_trainers_mse_and_differentiable_in_the_net_only(image):
    diffusion = copy.deepcopy(image).train()
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (4, 1, 16, 16), generator=g, dtype=torch.uint8)
    loss, per_sample, tp = diffusion.loss({"images": u8}, torch.Generator().manual_seed(5))
    pred = diffusion.net(tp.x_t, tp.model_timesteps, class_labels=None).sample
    torch.testing.assert_close(per_sample, F.mse_loss(pred, tp.target, reduction="none").flatten(1).mean(1))
    scaled = {"images": u8.float().div(127.5).sub(1.0)}  # float images are taken as [-1, 1] already
    same, _, _ = diffusion.loss(scaled, torch.Generator().manual_seed(5))
    assert torch.equal(same.detach(), loss.detach())
    grads = torch.autograd.grad(loss, list(diffusion.parameters()), allow_unused=True)
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    again, _, _ = diffusion.loss(None, prepared=diffusion.prepare(scaled, torch.Generator().manual_seed(5)))
    assert torch.equal(again.detach(), loss.detach())


def test_class_conditional_image_model_takes_labels():
    cfg = OmegaConf.create(
        {
            "block_out_channels": [8, 8],
            "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"],
            "layers_per_block": 1,
            "norm_num_groups": 4,
        }
    )
    torch.manual_seed(0)
    net = build_unet(cfg, image_size=8, channels=1, num_classes=3).eval()
    tr = OmegaConf.create(
        {"num_train_timesteps": 10, "beta_schedule": "linear", "objective": "epsilon", "sampler": "ddim"}
    )
    core = build_core(tr, OmegaConf.create({"name": "vanilla", "params": {}}))
    diffusion = ImageDiffusion(net, core, num_inference_steps=2)
    assert diffusion.num_classes == 3 and diffusion.sampler == "ddim"
    got = diffusion.sample(5, seed=0, batch_size=2)
    want = former_generate(
        net, core, 5, channels=1, image_size=8, steps=2, sampler="ddim", seed=0, batch_size=2, num_classes=3
    )
    assert torch.equal(got, want)  # labels cycle 0, 1, 2, 0, 1 as before
    assert not torch.equal(diffusion.sample(5, seed=0, labels=torch.zeros(5, dtype=torch.long)), got)
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="needs the batch's labels"):
        diffusion.loss({"images": x}, torch.Generator().manual_seed(0))
    loss, _, _ = diffusion.loss(
        {"images": x, "labels": torch.tensor([0, 2])}, torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(loss)


def test_image_with_net_samples_through_the_given_network(image):
    other = copy.deepcopy(image.net)
    view = image.with_net(other)
    assert view.net is other and view.core is image.core and same_params(view, other)
    settings = ("sampler", "num_inference_steps", "num_classes", "channels", "image_size", "bf16", "seed")
    assert [getattr(view, k) for k in settings] == [getattr(image, k) for k in settings]
    assert not view.training  # its mode follows the network's (the EMA copy's: eval)
    assert torch.equal(view.sample(3, seed=0), image.sample(3, seed=0))
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    assert not torch.equal(view.sample(3, seed=0), image.sample(3, seed=0))  # the given network runs


def test_auto_sampler_is_the_trainer_schemas_for_both_objects():
    """An object built without a sampler (or with ``auto``) samples as its trainer's ``auto`` says
    (config_schema.trainer_sampler: DDPM for a policy, DDIM for an image model, the objective's own for
    flow); a sampler that does not fit the objective is refused when the object is made."""
    from immiscible_policy.config_schema import trainer_sampler

    vanilla = OmegaConf.create({"name": "vanilla", "params": {}})
    for objective in ("epsilon", "flow"):
        tr = OmegaConf.create({"num_train_timesteps": 10, "beta_schedule": "linear", "objective": objective})
        core = build_core(tr, vanilla)
        unet1d = build_model(recorded_cfg(POLICY_RUN).model, 2, 20, 2)
        unet2d = build_unet(recorded_cfg(IMAGE_RUN).model, image_size=16, channels=1)
        shape = dict(horizon=16, n_obs_steps=2, n_action_steps=8, action_dim=2)
        for auto in (None, "auto"):
            policy = DiffusionPolicy(unet1d, core, None, sampler=auto, **shape)
            assert policy.sampler == trainer_sampler({"sampler": "auto"}, objective, "policy")
            assert ImageDiffusion(unet2d, core, sampler=auto).sampler == trainer_sampler(
                {"sampler": "auto"}, objective, "image"
            )
        assert (policy.sampler, ImageDiffusion(unet2d, core).sampler) == (
            ("ddpm", "ddim") if objective == "epsilon" else ("euler", "euler")
        )
        wrong = "ddim" if objective == "flow" else "euler"
        with pytest.raises(ValueError, match=f"does not fit objective '{objective}'"):
            DiffusionPolicy(unet1d, core, None, sampler=wrong, **shape)
        with pytest.raises(ValueError, match=f"does not fit objective '{objective}'"):
            ImageDiffusion(unet2d, core, sampler=wrong)


# ------------------------------------------------------------------------------------ layering


def test_policy_model_module_imports_neither_build_nor_load():
    """model.py is below build.py (config -> policy) and load.py (checkpoint -> build): no import of either,
    at module level or inside a function."""
    tree = ast.parse((PACKAGE / "policy" / "model.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    assert not {
        m
        for m in imported
        if m.startswith(("immiscible_policy.policy.load", "immiscible_policy.policy.build"))
    }
    assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)


# A fresh interpreter: loads each kind of checkpoint through its class alone and lists what it imported.
FRESH_LOAD = r"""
import json, sys
import torch
from immiscible_policy.image.diffusion import ImageDiffusion
from immiscible_policy.policy.model import DiffusionPolicy
policy = DiffusionPolicy.from_checkpoint(sys.argv[1], device="cpu", seed=0)
image = ImageDiffusion.from_checkpoint(sys.argv[2], device="cpu", seed=0)
obs = torch.linspace(0.0, 500.0, 2 * 2 * 20).reshape(2, 2, 20)
print(json.dumps({
    "modules": sorted(m for m in sys.modules if m.startswith("immiscible_policy.")),
    "actions": policy.predict_action(obs).tolist(),
    "samples": image.sample(3, seed=0, batch_size=3).tolist(),
}))
"""


def test_from_checkpoint_needs_nothing_above_the_model_modules():
    """``DiffusionPolicy.from_checkpoint`` / ``ImageDiffusion.from_checkpoint`` load in a fresh interpreter
    that imported only their own modules: nothing above them (building, loading, sampling helpers,
    evaluation, trainers) is imported, nor needed to register anything."""
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(POLICY_RUN), str(IMAGE_RUN)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    above = {
        "immiscible_policy.policy.build",
        "immiscible_policy.policy.load",
        "immiscible_policy.policy.train",
        "immiscible_policy.policy.evaluate",
        "immiscible_policy.image.sampling",
        "immiscible_policy.image.evaluate",
        "immiscible_policy.image.train",
    }
    assert not above & set(out["modules"]) and "immiscible_policy.policy.networks" in out["modules"]
    want = former_policy_actions(POLICY_RUN, fixture_obs())
    # the same numbers up to float32 summation order: the child may run another number of CPU threads than
    # this process (CI's pytest runs two), which changes the order of the kernels' reductions
    np.testing.assert_allclose(np.asarray(out["actions"], dtype=np.float32), want, rtol=1e-5, atol=1e-3)
    image = ImageDiffusion.from_checkpoint(IMAGE_RUN, device="cpu", seed=0)
    samples = torch.tensor(out["samples"], dtype=torch.float32)
    torch.testing.assert_close(samples, image.sample(3, seed=0, batch_size=3), rtol=1e-5, atol=1e-5)
