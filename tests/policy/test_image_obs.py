"""Image-observation policies without the demos: the encoder's shapes and crops, the image net, the
pairing condition c2ot sees, the flat env layout, and the config checks (all synthetic, CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from immiscible_policy.noising import build_core
from immiscible_policy.policy.build import build_encoder, build_model
from immiscible_policy.policy.model import DiffusionPolicy, ImageConditionedUnet, pairing_embedding
from immiscible_policy.policy.normalizer import MinMaxNormalizer
from immiscible_policy.policy.vision import (
    ImageEncoder,
    ResNetGN,
    SpatialSoftmax,
    centre_offsets,
    crop_images,
    random_offsets,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = {
    "channels": [8, 8, 16, 16],
    "blocks": [1, 1, 1, 1],
    "group_size": 4,
    "num_keypoints": 4,
    "feature_dim": 6,
}


def frames(n: int, seed: int = 0, size: int = 96) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def test_resnet18_trunk_has_torchvision_resnet18_size_and_output_shape():
    trunk = ResNetGN()  # GroupNorm has BatchNorm's affine parameters: the count is torchvision's minus fc
    assert sum(p.numel() for p in trunk.parameters()) == 11_689_512 - (512 * 1000 + 1000)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())
    with torch.no_grad():
        assert trunk(torch.zeros(1, 3, 84, 84)).shape == (1, 512, 3, 3)


def test_encoder_shapes_and_uint8_input():
    enc = build_encoder(SMALL).eval()
    out = enc(frames(5))
    assert out.shape == (5, 6) and out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        enc(frames(2).permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="model.vision.channels"):
        ResNetGN(channels=(8, 16), blocks=(1,))


def test_spatial_softmax_finds_the_peak():
    pool = SpatialSoftmax(1, 1)
    with torch.no_grad():
        pool.keypoints.weight.fill_(100.0)
        pool.keypoints.bias.zero_()
    x = torch.zeros(1, 1, 3, 5)
    x[0, 0, 2, 1] = 1.0  # row 2 of 3 (y = +1), column 1 of 5 (x = -0.5)
    torch.testing.assert_close(pool(x), torch.tensor([[-0.5, 1.0]]), atol=1e-4, rtol=0)


def test_crops_random_in_training_centre_in_eval_and_seeded():
    enc = ImageEncoder(**SMALL, crop=84)
    imgs = frames(64)
    enc.train()
    a = enc.offsets(imgs, torch.Generator().manual_seed(3))
    b = enc.offsets(imgs, torch.Generator().manual_seed(3))
    c = enc.offsets(imgs, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 12 and len(torch.unique(a[:, 0])) > 5  # spread over 0..12
    enc.eval()
    assert torch.equal(enc.offsets(imgs), torch.full((64, 2), 6))
    assert torch.equal(centre_offsets((2, 3), (96, 96), 84), torch.full((2, 3, 2), 6))
    # the gathered crops are plain slices
    crops = crop_images(imgs, a, 84)
    for i in (0, 17, 63):
        r, col = a[i].tolist()
        assert torch.equal(crops[i], imgs[i, :, r : r + 84, col : col + 84])
    # eval features come from the centre crop; training ones depend on the seed
    with torch.no_grad():
        assert torch.equal(enc(imgs[:2]), enc(imgs[:2], centre_offsets((2,), (96, 96), 84)))
        enc.train()
        g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
        assert torch.equal(enc(imgs[:2], generator=g(1)), enc(imgs[:2], generator=g(1)))
    with pytest.raises(ValueError, match="model.vision.crop=97"):
        random_offsets((1,), (96, 96), 97)


def test_features_do_not_depend_on_the_batch():
    # GroupNorm: a frame's features are the same alone or in a batch (emulated ranks == real ranks)
    enc = ImageEncoder(**SMALL).eval()
    imgs = frames(6, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(enc(imgs)[2:3], enc(imgs[2:3]), rtol=1e-5, atol=1e-5)


def _image_policy(assigner: str = "c2ot"):
    cfg = OmegaConf.create(
        {
            "down_dims": [16, 32],
            "kernel_size": 3,
            "n_groups": 4,
            "diffusion_step_embed_dim": 16,
            "cond_predict_scale": True,
            "vision": SMALL,
        }
    )
    model = build_model(cfg, action_dim=2, obs_dim=2, n_obs_steps=2, image=True)
    tr = OmegaConf.create(
        {"num_train_timesteps": 10, "beta_schedule": "squaredcos_cap_v2", "objective": "epsilon"}
    )
    core = build_core(tr, OmegaConf.create({"name": assigner, "params": {}}))
    norm = MinMaxNormalizer().fit(
        {"obs": np.array([[0.0, 0.0], [512.0, 512.0]]), "action": np.array([[0.0, 0.0], [512.0, 512.0]])}
    )
    pol = DiffusionPolicy(
        model,
        core,
        norm,
        horizon=8,
        n_obs_steps=2,
        n_action_steps=4,
        action_dim=2,
        num_inference_steps=2,
        sampler="ddim",
        image_shape=(3, 96, 96),
        crop=84,
    )
    return model, pol


def test_image_net_state_dict_holds_the_encoder_and_trains_it():
    model, pol = _image_policy("vanilla")
    assert isinstance(model, ImageConditionedUnet)
    keys = model.state_dict().keys()
    assert any(k.startswith("encoder.trunk.") for k in keys) and any(k.startswith("unet.") for k in keys)
    imgs = frames(8).view(4, 2, 3, 96, 96)
    obs, act = torch.rand(4, 8, 2) * 2 - 1, torch.rand(4, 8, 2) * 2 - 1
    loss, per_sample, _ = pol.loss(
        {"obs": obs, "action": act, "images": imgs}, torch.Generator().manual_seed(0)
    )
    loss.backward()
    assert per_sample.shape == (4,)
    assert model.encoder.trunk.stem[0].weight.grad.abs().sum() > 0  # gradients reach the encoder
    # same seed -> same crops, noise and loss; the rank-sliced path crops each slice from its own stream
    again, _, _ = pol.loss({"obs": obs, "action": act, "images": imgs}, torch.Generator().manual_seed(0))
    assert torch.equal(loss.detach(), again.detach())
    with pytest.raises(ValueError, match="needs the batch's frames"):
        pol.loss({"obs": obs, "action": act}, torch.Generator().manual_seed(0))


def test_rank_slices_crop_and_noise_from_their_own_streams():
    # what one process playing 2 ranks computes == what each rank computes on its slice (DDP's rule)
    model, pol = _image_policy("vanilla")
    imgs = frames(8, seed=3).view(4, 2, 3, 96, 96)
    obs, act = torch.rand(4, 8, 2) * 2 - 1, torch.rand(4, 8, 2) * 2 - 1
    gens = lambda: [torch.Generator().manual_seed(10 + r) for r in range(2)]  # noqa: E731
    with torch.no_grad():
        _, both, _ = pol.loss({"obs": obs, "action": act, "images": imgs}, gens())
        g0, g1 = gens()
        _, first, _ = pol.loss({"obs": obs[:2], "action": act[:2], "images": imgs[:2]}, g0)
        _, second, _ = pol.loss({"obs": obs[2:], "action": act[2:], "images": imgs[2:]}, g1)
        _, one_stream, _ = pol.loss(
            {"obs": obs, "action": act, "images": imgs}, torch.Generator().manual_seed(10)
        )
    torch.testing.assert_close(both, torch.cat([first, second]), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(both, one_stream)  # negative control: one stream for the batch differs


def test_c2ot_sees_agent_xy_plus_pooled_ink(monkeypatch):
    model, pol = _image_policy("c2ot")
    imgs = frames(8, seed=2).view(4, 2, 3, 96, 96)
    obs = torch.rand(4, 8, 2) * 2 - 1
    cond = pol.pairing_cond(obs, imgs)
    manual = [obs[:, :2].flatten(1)]
    pooled = 1 - imgs.float().div(255).view(4, 2, 3, 8, 12, 8, 12).mean((4, 6))
    manual.append(pooled.flatten(1))
    torch.testing.assert_close(cond, torch.cat(manual, 1))
    assert cond.shape == (4, 2 * 2 + 2 * 3 * 8 * 8)
    white = torch.full((1, 1, 3, 96, 96), 255, dtype=torch.uint8)
    assert torch.equal(pairing_embedding(white), torch.zeros(1, 192))  # empty background: no ink
    seen = {}
    real = pol.core.assigner.pair

    def spy(x0, noise, *, generator=None, cond=None):
        seen["cond"] = cond
        return real(x0, noise, generator=generator, cond=cond)

    monkeypatch.setattr(pol.core.assigner, "pair", spy)
    pol.loss({"obs": obs, "action": torch.rand(4, 8, 2), "images": imgs}, torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen["cond"], cond)


def test_predict_action_splits_the_env_layout_and_uses_the_centre_crop():
    model, pol = _image_policy("vanilla")
    model.train()  # even a net left in training mode acts on centre crops
    imgs = frames(4, seed=5).view(2, 2, 3, 96, 96)
    agent = torch.tensor([[[100.0, 200.0], [110.0, 210.0]]] * 2)
    flat = torch.cat([imgs.flatten(2).float(), agent], -1).numpy()  # the env's (n, To, 3*96*96 + 2)
    got_imgs, got_agent = pol.split_image_obs(torch.from_numpy(flat))
    assert torch.equal(got_imgs, imgs) and torch.equal(got_agent, agent)
    act = pol.predict_action(flat, generator=torch.Generator().manual_seed(0))
    assert act.shape == (2, 4, 2) and np.isfinite(act).all()
    with pytest.raises(ValueError, match="obs_type='image'"):
        pol.predict_action(np.zeros((1, 2, 20), dtype=np.float32))


def test_config_check_pairs_image_tasks_with_image_models():
    from hydra import compose, initialize_config_dir

    from immiscible_policy.config_check import check_config

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        ok = compose("train", overrides=["task=pusht_image", "run_dir=/tmp/x"])
        assert ok.model.name == "unet1d_image_cpu" and ok.task.obs_type == "image"
        assert check_config(ok)["kind"] == "policy"
        cases = {
            ("task=pusht_image", "model=unet1d_cpu"): "task.obs_type=image needs an image model",
            ("task=pusht", "model=dp_image"): "has an image encoder (model.vision) but task.obs_type=",
            ("task=pusht_image", "+model.vision.crops=80"): "model.vision.crops is not a setting",
            ("task=pusht_image", "model.vision.crop=100"): "model.vision.crop=100 exceeds task.image_size=96",
            ("task=pusht_image", "model.vision.blocks=[1,1]"): "need one entry per ResNet stage",
        }
        for overrides, message in cases.items():
            with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
                check_config(compose("train", overrides=[*overrides, "run_dir=/tmp/x"]))
