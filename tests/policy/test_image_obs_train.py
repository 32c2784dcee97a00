"""Image-observation PushT end to end on the demos: the dataset's frames, a few training steps with the
CPU-sized encoder that write a checkpoint, and ``immiscible-eval`` of it on camera observations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from immiscible_policy.policy.dataset import default_pusht_zarr

ZARR = Path(default_pusht_zarr())
pytestmark = pytest.mark.skipif(
    not ZARR.exists(), reason=f"PushT demos not found at {ZARR} (set IMMISCIBLE_PUSHT_ZARR)"
)

TINY = [
    "task=pusht_image",
    "task.max_train_episodes=2",
    "task.val_ratio=0.01",
    "trainer.batch_size=8",
    "trainer.max_steps_per_epoch=2",
    "trainer.warmup_steps=1",
    "trainer.num_inference_steps=2",
    "trainer.eval_every_epochs=0",
    "trainer.eval_at_end=false",
    "trainer.progress=false",
    "trainer.epochs=1",
    "task.eval.max_steps=16",
    "model.vision.channels=[8,8,16,16]",
    "model.vision.group_size=4",
    "model.down_dims=[32,64]",
]


def test_image_dataset_keeps_uint8_frames_of_the_loaded_episodes():
    from immiscible_policy.data import ReplayBuffer
    from immiscible_policy.policy.dataset import PushTImageDataset, PushTLowdimDataset

    ds = PushTImageDataset(ZARR, max_train_episodes=2, val_ratio=0.01)
    assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (3, 96, 96) and ds.obs_dim == 2
    loaded = np.nonzero(ds.train_mask | ds.val_mask)[0]
    assert len(ds.images) == sum(
        int(ds.episode_ends[e] - (ds.episode_ends[e - 1] if e else 0)) for e in loaded
    )
    item = ds[5]
    rows = ds.sampler.indices[5, :2]
    lazy = ReplayBuffer.open(ZARR, keys=["img"], lazy=True)
    recorded = np.stack([lazy["img"][int(r)] for r in rows])  # (2, 96, 96, 3) float 0..255
    np.testing.assert_array_equal(item["image"].numpy(), recorded.transpose(0, 3, 1, 2).astype(np.uint8))
    state = ReplayBuffer.open(ZARR, keys=["state"])["state"]
    np.testing.assert_array_equal(item["obs"].numpy(), state[ds.sampler.indices[5], :2].astype(np.float32))
    w = ds.all_windows()
    assert w["image_rows"].shape == (len(ds), 2) and (w["image_rows"] >= 0).all()
    val = ds.get_validation_dataset()
    assert val.images is ds.images and (val.all_windows()["image_rows"] >= 0).all()
    with pytest.raises(ValueError, match=r"unknown obs_type 'image'; valid: \['keypoints', 'state'\]"):
        PushTLowdimDataset(ZARR, obs_type="image")  # frames are PushTImageDataset's
    with pytest.raises(ValueError, match=r"unknown obs_type 'state'; valid: \['image'\]"):
        PushTImageDataset(ZARR, obs_type="state")


# fast on purpose (~5 s on an AVX-512 Xeon): frames of 4 episodes, 2 steps, checkpoint, a 16-step rollout with
# the camera video: the image-observation path end to end
def test_train_checkpoint_then_eval_with_camera_video(tmp_path):
    # in-process (the CLI's composition, check and trainer; eval's own main): no interpreter start-up
    from hydra import initialize_config_dir

    from immiscible_policy.cli._hydra import compose_train, config_dir
    from immiscible_policy.cli.eval import main as eval_main
    from immiscible_policy.cli.train import preflight
    from immiscible_policy.policy.train import train_policy

    run = tmp_path / "run"
    preflight([*TINY, f"run_dir={run}"])
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose_train([*TINY, f"run_dir={run}"])
    train_policy(cfg, run)
    last = run / "checkpoints" / "last"
    weights = load_file(last / "ema.safetensors")
    assert any(k.startswith("encoder.trunk.") for k in weights) and any(
        k.startswith("unet.") for k in weights
    )
    cfg = json.loads((last / "config.json").read_text())
    assert cfg["policy"] == {"obs_dim": 2, "action_dim": 2} and cfg["cfg"]["task"]["obs_type"] == "image"
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2

    out = tmp_path / "eval"
    args = [
        f"checkpoint={run}",
        "n_episodes=1",
        f"output_dir={out}",
        "n_video_episodes=1",
        "video_format=gif",
    ]
    assert eval_main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_episodes"] == 1 and 0.0 <= metrics["mean_score"] <= 1.0
    assert metrics["n_steps"] == [16]
    import imageio.v3 as iio

    video = iio.imread(out / "rollout.gif")
    # at most reset + 16 steps (a GIF merges identical frames); the usual view, then the camera frame
    assert 2 <= video.shape[0] <= 17 and video.shape[2] == 2 * video.shape[1]


@pytest.mark.slow  # two torchrun processes + an in-process run (~1 min of CPU); the rank-slice rule itself is
# checked fast by tests/policy/test_image_obs.py::test_rank_slices_crop_and_noise_from_their_own_streams
def test_ddp_image_policy_equals_emulated_ranks(tmp_path):
    import os
    import subprocess
    import sys

    from hydra import initialize_config_dir

    from immiscible_policy.cli._hydra import compose_train, config_dir
    from immiscible_policy.policy.train import train_policy

    common = [*TINY, "trainer.batch_size=4", "trainer.device=cpu", f"task.dataset_path={ZARR}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IMMISCIBLE_PUSHT_ZARR": str(ZARR)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*launch, "-m", "immiscible_policy.cli.train", *common, f"run_dir={tmp_path / 'ddp'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose_train([*common, "trainer.emulate_ranks=2", f"run_dir={tmp_path / 'emu'}"])
    train_policy(cfg, tmp_path / "emu")
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "ddp" / "checkpoints" / "last" / name)
        b = load_file(tmp_path / "emu" / "checkpoints" / "last" / name)
        assert a.keys() == b.keys() and any(k.startswith("encoder.") for k in a)
        diff = max((a[k] - b[k]).abs().max().item() for k in a)
        assert diff < 1e-5, f"{name}: DDP vs emulated ranks differ by {diff}"
