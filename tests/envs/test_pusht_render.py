"""The env's camera renders what the demos recorded: replay demo states, compare with ``data/img``.

Measured (pusht_cchi_v7_replay.zarr, episodes 0 / 50 / 150, every 7th step): mean absolute difference
0.05-0.09 on the 0..255 scale, per frame at most 0.12; the differing pixels (30-40 of 9216 per frame)
lie on polygon edges only (the goal T's and the block's outline). Why a residual at all: the frame is a
512x512 pygame drawing shrunk to 96x96 by OpenCV's bilinear resize, so each output pixel samples a
few source pixels and a pixel on an edge flips when pygame's polygon rasterisation of that edge differs
by one source pixel: the demos were drawn by the pygame of 2023 (diffusion_policy's env) and the block
pose comes back from float32 storage. Interior pixels, the agent and the background match exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from immiscible_policy.policy.dataset import default_pusht_zarr

ZARR = Path(default_pusht_zarr())
pytestmark = pytest.mark.skipif(
    not ZARR.exists(), reason=f"PushT demos not found at {ZARR} (set IMMISCIBLE_PUSHT_ZARR)"
)


def _replay(episodes, stride):
    from immiscible_envs.pusht import PushTEnv

    from immiscible_policy.data import ReplayBuffer

    states = ReplayBuffer.open(ZARR, keys=["state"])
    lazy = ReplayBuffer.open(ZARR, keys=["img"], lazy=True)
    env = PushTEnv(obs_type="image")
    diffs, changed = [], []
    for e in episodes:
        state = states["state"][states.episode_slice(e)]
        recorded = lazy.get_episode(e, ["img"])["img"]  # (n, 96, 96, 3) float 0..255
        for k in range(0, len(state), stride):
            obs, _ = env.reset(options={"reset_to_state": state[k]})
            frame = obs[:-2].reshape(3, 96, 96).transpose(1, 2, 0)  # the observation's own frame
            np.testing.assert_array_equal(frame, env.camera())
            np.testing.assert_allclose(obs[-2:], state[k, :2], atol=1e-4)  # then the agent xy
            d = np.abs(frame.astype(np.float64) - recorded[k])
            diffs.append(d.mean())
            changed.append((d.max(-1) > 0).mean())
    env.close()
    return np.array(diffs), np.array(changed)


def test_rendered_frames_match_the_recorded_ones():
    diffs, changed = _replay(episodes=[0, 150], stride=40)
    print(
        f"mean abs pixel difference {diffs.mean():.4f} (max per frame {diffs.max():.4f}) over {len(diffs)} frames"
    )
    assert diffs.mean() < 0.15 and diffs.max() < 0.3  # of 255; measured 0.07 / 0.12
    assert changed.max() < 0.01  # < 1% of the pixels differ at all (edges only)


@pytest.mark.slow  # ~10 s: more episodes and every 3rd step, same property
def test_rendered_frames_match_many_episodes():
    diffs, changed = _replay(episodes=[0, 37, 50, 101, 150, 205], stride=3)
    assert diffs.mean() < 0.15 and diffs.max() < 0.3 and changed.max() < 0.01


def test_image_obs_env_video_frame_shows_the_camera():
    from immiscible_envs.pusht import OBS_DIMS, PushTEnv

    env = PushTEnv(obs_type="image", render_size=128)
    obs, _ = env.reset(seed=100000)
    assert obs.shape == (OBS_DIMS["image"],) == env.observation_space.shape and obs.dtype == np.float32
    obs, *_ = env.step(np.array([300.0, 300.0]))
    view = env.render()
    assert view.shape == (128, 256, 3)  # the usual view, then the camera frame upscaled
    cam = obs[:-2].reshape(3, 96, 96).transpose(1, 2, 0).astype(np.uint8)
    np.testing.assert_array_equal(view[::4, 128::4], cam[::3, ::3])  # nearest-neighbour, 96 -> 128
    env.close()
