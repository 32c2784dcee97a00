"""immiscible/PushT-v0 against the real demos: keypoint geometry, demo replay, test starts, scoring."""

import time
from pathlib import Path

import gymnasium as gym
import immiscible_envs
import numpy as np
import pytest
from immiscible_envs.pusht import BLOCK_COG, KEYPOINTS_LOCAL, PUSHT_ENV_ID, PushTEnv, block_keypoints

from immiscible_policy.policy.dataset import default_pusht_zarr  # noqa: E402

PUSHT_ZARR = Path(default_pusht_zarr())
needs_pusht = pytest.mark.skipif(
    not PUSHT_ZARR.exists(), reason=f"PushT store not found at {PUSHT_ZARR} (set IMMISCIBLE_PUSHT_ZARR)"
)


@pytest.fixture(scope="module")
def demos():
    if not PUSHT_ZARR.exists():
        pytest.skip(f"PushT store not found at {PUSHT_ZARR} (set IMMISCIBLE_PUSHT_ZARR)")
    from immiscible_policy.data import ReplayBuffer

    buf = ReplayBuffer.open(PUSHT_ZARR, keys=["state", "action", "keypoint"])
    ends = buf.episode_ends
    step = (
        np.arange(buf.n_steps)
        - np.concatenate([[0], ends[:-1]])[np.searchsorted(ends, np.arange(buf.n_steps), side="right")]
    )
    return buf, step


def _angle_diff(a, b):
    return np.abs(np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b)))))


@needs_pusht
def test_keypoint_constants_rederived_by_least_squares(demos):
    buf, step = demos
    s, kp = buf["state"].astype(np.float64), buf["keypoint"].astype(np.float64)
    use = step >= 5
    c, sn = np.cos(s[use, 4])[:, None], np.sin(s[use, 4])[:, None]
    d = kp[use] - s[use, None, 2:4]
    # least squares for a fixed body-frame point under known rotations = mean of the back-rotated points
    local = np.stack(
        [(c * d[..., 0] + sn * d[..., 1]).mean(0), (-sn * d[..., 0] + c * d[..., 1]).mean(0)], -1
    )
    np.testing.assert_allclose(KEYPOINTS_LOCAL, local, atol=1e-5)


@needs_pusht
def test_recomputed_keypoints_match_data(demos):
    buf, step = demos
    s = buf["state"].astype(np.float64)
    err = np.linalg.norm(block_keypoints(s[:, 2:4], s[:, 4]) - buf["keypoint"], axis=-1).max(-1)
    late = err[step >= 4]  # from each episode's 5th step on
    assert late.max() < 0.15, late.max()
    assert late.mean() < 0.01, late.mean()


def test_registration_is_idempotent_and_makes_env():
    immiscible_envs.register_envs()
    immiscible_envs.register_envs()
    assert PUSHT_ENV_ID in gym.registry
    assert gym.registry[PUSHT_ENV_ID].max_episode_steps == 300
    for obs_type, dim in (("keypoints", 20), ("state", 6)):
        env = gym.make(PUSHT_ENV_ID, obs_type=obs_type)
        obs, info = env.reset(seed=100000)
        assert obs.shape == (dim,) and obs.dtype == np.float32 and env.observation_space.contains(obs)
        assert {"coverage", "score", "success"} <= set(info)
        frame = env.render()
        assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8 and frame.std() > 0
        env.close()
    with pytest.raises(
        ValueError, match=r"unknown obs_type 'pixels'; valid: \['image', 'keypoints', 'state'\]"
    ):
        PushTEnv(obs_type="pixels")


def test_block_cog_matches_gym_pusht():
    env = PushTEnv()
    env.reset(seed=0)
    assert tuple(env._sim.block.center_of_gravity) == BLOCK_COG


def test_test_starts_follow_diffusion_policy_formula():
    env = PushTEnv(obs_type="state")
    for seed in range(100000, 100050):
        rs = np.random.RandomState(seed)
        agent = (rs.randint(50, 450), rs.randint(50, 450))
        block = np.array([rs.randint(100, 400), rs.randint(100, 400)], dtype=np.float64)
        angle = rs.randn() * 2 * np.pi - np.pi
        env.reset(seed=seed)
        st = env.state
        np.testing.assert_allclose(st[:2], agent, atol=1e-9)
        assert _angle_diff(st[4], angle) < 1e-9
        # position set first, then the angle, which pymunk applies about the centre of gravity (0, 45):
        # the COG stays where the formula's position put it, block + (0, 45)
        cog = st[2:4] + np.array([-np.sin(st[4]) * 45.0, np.cos(st[4]) * 45.0])
        np.testing.assert_allclose(cog, block + [0.0, 45.0], atol=1e-9)
    # reset(seed) is deterministic and independent of gym-pusht's own seeding
    a, _ = env.reset(seed=100007)
    b, _ = env.reset(seed=100007)
    np.testing.assert_array_equal(a, b)


@needs_pusht
def test_reset_to_state_observations_equal_dataset(demos):
    from immiscible_policy.policy.dataset import pusht_obs

    buf, step = demos
    rows = np.nonzero(step >= 4)[0][::997]
    envs = {t: PushTEnv(obs_type=t) for t in ("keypoints", "state")}
    for r in rows:
        for obs_type, env in envs.items():
            obs, _ = env.reset(options={"reset_to_state": buf["state"][r]})
            want = pusht_obs(buf["state"][r : r + 1], buf["keypoint"][r : r + 1], obs_type)[0]
            np.testing.assert_allclose(obs, want, atol=0.15 if obs_type == "keypoints" else 1e-4)


@needs_pusht
@pytest.mark.slow  # 37 s: all 206 demos; the env's other tests replay and reset in seconds
def test_replaying_every_demo_reproduces_recorded_states(demos):
    """state[t] is recorded before action[t]; replay from state[ep start] with the recorded actions."""
    buf, _ = demos
    env = PushTEnv(obs_type="state")
    worst_pos, worst_angle, n_steps, successes = 0.0, 0.0, 0, 0
    t0 = time.perf_counter()
    for e in range(buf.n_episodes):
        ep = buf.get_episode(e)
        s, a = ep["state"].astype(np.float64), ep["action"]
        env.reset(options={"reset_to_state": s[0]})
        got = [env.state]
        best_cov = 0.0
        for t in range(len(a)):  # the last action has no recorded state after it, but scores
            _, reward, terminated, _, info = env.step(a[t])
            got.append(env.state)
            assert reward == pytest.approx(min(info["coverage"] / 0.95, 1.0)) == info["score"]
            assert terminated == info["success"] == (info["coverage"] >= 0.95)
            best_cov = max(best_cov, info["coverage"])
            n_steps += 1
        got = np.array(got[: len(s)])
        worst_pos = max(worst_pos, np.abs(got[:, 2:4] - s[:, 2:4]).max())
        worst_angle = max(worst_angle, _angle_diff(got[:, 4], s[:, 4]).max())
        successes += best_cov >= 0.95
    seconds = time.perf_counter() - t0
    print(
        f"replayed {buf.n_episodes} demos, {n_steps} steps in {seconds:.1f}s; max block error "
        f"{worst_pos:.2e} px, {worst_angle:.2e} rad; {successes} reach coverage >= 0.95"
    )
    assert worst_pos < 0.5, worst_pos
    assert worst_angle < 0.01, worst_angle
    assert successes == 7  # demonstrators succeed rarely: 7 of 206 reach coverage 0.95, on their last step
