"""The PushT env's mode bookkeeping: the sign of a turn as the video shows it, whole turns, the first
contact, and the symmetric starts (docs/modes.md).

The sign convention is checked on rendered frames, not by formula: a viewer calls a turn clockwise when a
point of the T at 12 o'clock moves towards 3 o'clock, so the "clock angle" of the T's stem, measured from
the image's up direction (row 0 is the top of a displayed image) towards its right, must grow.
"""

from __future__ import annotations

import numpy as np
import pytest
from immiscible_envs.pusht import (
    GOAL_POSE,
    SYMMETRIC_STARTS,
    PushTEnv,
    block_keypoints,
    block_moved,
)

from immiscible_policy.metrics.pusht_modes import approach_side, rotation_mode, side_of

#: gym-pusht draws the block LightSlateGray with a lighter fill; nothing else on screen has these colours
BLOCK_RGB = np.array([[119, 136, 153], [143, 163, 184]])


def stem_clock_angle(frame: np.ndarray) -> float:
    """Clock angle (rad, 0 = up on screen, growing clockwise) of the T's stem as drawn in ``frame``: the
    direction from the T's pixel centroid to its farthest pixels (the stem's end: 81 px from the centroid
    against 73 px for the bar's corners, in the body frame's units)."""
    mask = (frame[:, :, None, :] == BLOCK_RGB[None, None]).all(-1).any(-1)
    rows, cols = np.nonzero(mask)
    assert len(rows) > 300, "the block is not on screen"
    pts = np.stack([cols, rows], axis=1).astype(np.float64)  # (right, down) on screen
    centre = pts.mean(axis=0)
    dist = np.linalg.norm(pts - centre, axis=1)
    right, down = pts[dist > np.quantile(dist, 0.97)].mean(axis=0) - centre
    return float(np.arctan2(right, -down))  # up = (0, -1) -> 0; right = (1, 0) -> +pi/2


def _wrap(a: float) -> float:
    return (a + np.pi) % (2 * np.pi) - np.pi


def test_clock_angle_reads_screen_directions():
    """The helper's own convention on hand-drawn frames: a bar pointing up is 0, pointing right is +pi/2."""
    up = np.full((96, 96, 3), 255, np.uint8)  # the T at half size: stem 15 x 45 px, bar 60 x 15 px
    up[10:55, 40:55] = BLOCK_RGB[0]  # the stem from row 10 (the top) ...
    up[55:70, 18:78] = BLOCK_RGB[1]  # ... on the bar below it: the stem points up
    assert stem_clock_angle(up) == pytest.approx(0.0, abs=0.05)
    assert stem_clock_angle(np.rot90(up, k=-1).copy()) == pytest.approx(np.pi / 2, abs=0.05)  # turned cw


@pytest.mark.parametrize("angle", [0.0, 1.0, 2.5, -2.0])
def test_a_growing_block_angle_turns_the_t_clockwise_on_screen(angle):
    env = PushTEnv()  # the video's view (render_size 256)
    env.reset(options={"reset_to_state": [20, 20, 256, 300, angle]})
    before = stem_clock_angle(env.render())
    env.reset(options={"reset_to_state": [20, 20, 256, 300, angle + 0.3]})
    after = stem_clock_angle(env.render())
    env.close()
    assert _wrap(after - before) == pytest.approx(0.3, abs=0.05)  # clockwise, by the angle's change
    assert rotation_mode(0.3, threshold_deg=10) == "cw"


def _push(env: PushTEnv, targets) -> tuple[list[np.ndarray], dict]:
    states, info = [env.state], {}
    for target in targets:
        _, _, terminated, _, info = env.step(np.asarray(target, np.float64))
        states.append(env.state)
        if terminated:
            break
    return states, info


def test_a_pushed_turn_is_classified_as_the_video_shows_it():
    """The agent pushes the right end of the bar: the frames show a clockwise turn, the env reports a
    positive net rotation of the same size, and the classifier says cw."""
    env = PushTEnv()
    env.reset(options={"reset_to_state": [306.0, 260.0, 256.0, 300.0, 0.0]})
    first = stem_clock_angle(env.render())
    _, info = _push(env, [(306.0, 340.0)] * 40)
    turned = _wrap(stem_clock_angle(env.render()) - first)
    env.close()
    assert turned > 0.3 and info["net_rotation"] == pytest.approx(turned, abs=0.05)
    assert rotation_mode(info["net_rotation"], threshold_deg=15) == "cw"
    assert side_of(info["contact_local_x"]) == "right"


def test_net_rotation_counts_whole_turns():
    """pymunk's body angle is not wrapped: spun by -12 rad, the env reports -12 rad, as a per-step
    unwrapping of gym-pusht's wrapped angle does."""
    env = PushTEnv(obs_type="state", render_mode=None)
    env.reset(options={"reset_to_state": [50.0, 50.0, 256.0, 256.0, 3.0]})
    wrapped = [env._sim.get_obs()[4]]
    for _ in range(60):
        env._sim.block.angular_velocity = -20.0
        _, _, _, _, info = env.step(np.array([50.0, 50.0]))
        wrapped.append(env._sim.get_obs()[4])
    env.close()
    assert min(wrapped) >= 0 and max(wrapped) <= 2 * np.pi  # what gym-pusht reports is wrapped
    unwrapped = np.unwrap(wrapped)
    assert info["net_rotation"] == pytest.approx(unwrapped[-1] - unwrapped[0], abs=1e-9)
    assert info["net_rotation"] < -3 * np.pi and rotation_mode(info["net_rotation"]) == "ccw"


def test_contact_point_equals_the_trajectory_classifier():
    """info["contact_local_x"] is NaN until the block moves, then approach_side's local x of the recorded
    trajectory (the same functions compute both), and stays fixed."""
    env = PushTEnv(obs_type="state", render_mode=None)
    _, info = env.reset(options={"reset_to_state": [100.0, 300.0, 256.0, 300.0, 0.4]})
    assert np.isnan(info["contact_local_x"]) and info["net_rotation"] == 0.0
    states, seen = [env.state], []
    for k in range(30):
        _, _, _, _, info = env.step(np.array([100.0 + 12.0 * k, 300.0]))
        states.append(env.state)
        seen.append(info["contact_local_x"])
    env.close()
    traj = np.array(states)
    side, step, local_x = approach_side(traj[:, :2], traj[:, 2:])
    assert step > 1 and np.isnan(seen[: step - 1]).all()  # row `step` is after env step `step`
    assert seen[step - 1] == local_x and seen[-1] == local_x and side == side_of(local_x) != "none"
    assert block_moved(traj[step, 2:], traj[0, 2:]) and not block_moved(traj[step - 1, 2:], traj[0, 2:])


# ----------------------------------------------------------------------------------- symmetric starts


def _mirror(state: np.ndarray) -> np.ndarray:
    """The reflection in the goal T's axis y = 512 - x (docs/modes.md), written out here as the oracle."""
    ax, ay, bx, by, theta = state
    return np.array([512 - ay, 512 - ax, 512 - by, 512 - bx, np.pi / 2 - theta])


def test_symmetric_starts_are_their_own_mirror_images_and_upside_down():
    assert SYMMETRIC_STARTS.shape == (5, 5)
    goal = np.array(GOAL_POSE)
    assert goal[1] == 512 - goal[0] and _wrap(np.pi / 2 - goal[2] - goal[2]) == pytest.approx(0, abs=1e-12)
    for start in SYMMETRIC_STARTS:
        image = _mirror(start)
        np.testing.assert_allclose(image[:4], start[:4], rtol=0, atol=1e-9)
        assert abs(_wrap(image[4] - start[4])) < 1e-9
        # pi from the goal's angle turning either way
        assert abs(_wrap(start[4] - goal[2])) == pytest.approx(np.pi, abs=1e-9)
        assert (start[4] - goal[2]) % (2 * np.pi) == pytest.approx(np.pi, abs=1e-9)
        # the agent clear of the block: >= 40 px from every keypoint (its radius is 15 px)
        keypoints = block_keypoints(start[2:4], start[4])
        assert np.linalg.norm(keypoints - start[:2], axis=1).min() >= 40.0
    # distinct starts, both agent sides (behind the bar / beyond the stem) present
    assert len({tuple(s) for s in SYMMETRIC_STARTS}) == 5
    ahead = [np.dot(s[:2] - s[2:4], [-np.sin(s[4]), np.cos(s[4])]) > 0 for s in SYMMETRIC_STARTS]
    assert 0 < sum(ahead) < 5


def test_reset_places_the_symmetric_start_exactly():
    env = PushTEnv(obs_type="keypoints", render_mode=None)
    for seed in (0, 1, 2, 3, 4, 7, 100000, 100004):
        obs, info = env.reset(seed=seed, options={"starts": "symmetric"})
        start = SYMMETRIC_STARTS[seed % 5]
        np.testing.assert_allclose(env.state, start, rtol=0, atol=1e-9)
        np.testing.assert_allclose(obs[-2:], start[:2], atol=1e-4)
        assert info["seed"] == seed and info["coverage"] == 0.0  # off the goal: the score is the policy's
    with pytest.raises(ValueError, match=r"unknown options\['starts'\]='mirror'; valid: standard, symmetric"):
        env.reset(seed=0, options={"starts": "mirror"})
    with pytest.raises(ValueError, match="not both"):
        env.reset(seed=0, options={"starts": "symmetric", "reset_to_state": SYMMETRIC_STARTS[0]})
    env.close()


def test_the_vector_env_gives_each_env_its_symmetric_start():
    """gymnasium passes one ``options`` dict to every env of a vector env: the seed picks the start."""
    import gymnasium as gym

    from immiscible_policy.policy.episodes import VectorEnvs
    from immiscible_policy.policy.rollout import make_pusht_env

    venv = gym.vector.SyncVectorEnv([lambda: make_pusht_env("state")] * 3)
    envs = VectorEnvs(venv, idle_action=lambda obs: obs[:, -1:, :2], reset_options={"starts": "symmetric"})
    obs = envs.reset([3, 5, 9], [False] * 3)
    np.testing.assert_allclose(obs[:, -1, :4], SYMMETRIC_STARTS[[3, 0, 4], :4], atol=1e-4)
    assert envs.reset_options == {"starts": "symmetric"}  # not consumed by the reset
    envs.close()


def _local_path(start: np.ndarray, corners, per_leg: int = 12) -> list[np.ndarray]:
    """Targets along straight legs between points given in the start's block frame."""
    c, s = np.cos(start[4]), np.sin(start[4])
    rot = np.array([[c, -s], [s, c]])
    pts = [start[2:4] + rot @ np.asarray(p, np.float64) for p in corners]
    return [a + t * (b - a) for a, b in zip(pts[:-1], pts[1:]) for t in np.linspace(0, 1, per_leg)]


def test_mirrored_pushes_from_a_symmetric_start_turn_the_other_way():
    """The physics commutes with the reflection: a push on the right half of the bar and its mirror image
    (the same push on the left half) turn the T by opposite angles, clockwise then anticlockwise, and first
    touch opposite halves."""
    start = SYMMETRIC_STARTS[0]
    path = _local_path(start, [(45, -45), (45, -10), (50, 80), (50, 200)])
    out = []
    for mirrored in (False, True):
        env = PushTEnv(obs_type="state", render_mode=None)
        env.reset(seed=0, options={"starts": "symmetric"})
        _, info = _push(env, [(512 - p[1], 512 - p[0]) if mirrored else p for p in path])
        env.close()
        out.append(info)
    right, left = out
    assert right["net_rotation"] == pytest.approx(-left["net_rotation"], abs=1e-9)
    assert right["contact_local_x"] == pytest.approx(-left["contact_local_x"], abs=1e-9)
    assert np.degrees(right["net_rotation"]) > 45
    assert (rotation_mode(right["net_rotation"]), rotation_mode(left["net_rotation"])) == ("cw", "ccw")
    assert (side_of(right["contact_local_x"]), side_of(left["contact_local_x"])) == ("right", "left")
