"""evaluate(): receding-horizon rollouts over vector envs return well-formed metrics and a GIF."""

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from immiscible_policy.policy.rollout import evaluate


class HoldStill:
    """Targets the agent's current position; records what it was shown."""

    def __init__(self, n_action_steps=8):
        self.n_action_steps = n_action_steps
        self.calls = []

    def __call__(self, obs):
        self.calls.append(obs.copy())
        return np.repeat(obs[:, -1:, -2:], self.n_action_steps, axis=1)


def sweep(obs):
    """Deterministic policy that moves: drive the agent towards the block's first keypoint and past it."""
    agent, target = obs[:, -1, -2:], obs[:, -1, 0:2]
    steps = np.linspace(0.2, 1.6, 8)[None, :, None]
    return np.clip(agent[:, None] + steps * (target - agent)[:, None], 0, 512)


def test_evaluate_metrics_padding_and_gif(tmp_path):
    policy = HoldStill()
    gif = tmp_path / "videos" / "eval.gif"
    res = evaluate(
        policy, obs_type="keypoints", n_episodes=3, n_envs=2, max_steps=40, video_path=gif, progress=False
    )
    assert res["n_episodes"] == 3 and res["seeds"] == [100000, 100001, 100002]
    for key in ("scores", "final_coverage", "max_coverage", "success", "n_steps"):
        assert len(res[key]) == 3, key
    scores = np.array(res["scores"])
    assert ((scores >= 0) & (scores <= 1)).all()
    assert res["mean_score"] == pytest.approx(scores.mean())
    assert res["success_rate"] == pytest.approx(np.mean(res["success"]))
    np.testing.assert_allclose(scores, np.minimum(np.array(res["max_coverage"]) / 0.95, 1.0))
    assert res["n_steps"] == [40, 40, 40]  # time limit honoured; 40 = 5 chunks of 8
    # first query of a wave: history padded by repeating the reset observation
    first = policy.calls[0]
    assert first.shape == (2, 2, 20) and first.dtype == np.float32
    np.testing.assert_array_equal(first[:, 0], first[:, 1])
    # 2 waves (2 + 1 episodes), 5 chunks each; the last wave queries only its one real episode
    assert [len(c) for c in policy.calls] == [2] * 5 + [1] * 5
    assert res["video_path"] == str(gif)
    frame = iio.imread(gif, index=0)
    assert frame.shape[:2] == (256, 256)
    # GIF writers merge identical consecutive frames (this agent holds still), adding up their durations:
    # 2 episodes x (reset + 40 steps) at 10 fps = 8.2 s
    with Image.open(gif) as im:
        total_ms = 0
        for i in range(im.n_frames):
            im.seek(i)
            total_ms += im.info["duration"]
    assert total_ms == pytest.approx(2 * 41 * 100, abs=50)


def test_sync_and_async_agree_and_state_obs():
    kwargs = dict(obs_type="keypoints", n_episodes=2, start_seed=100010, max_steps=24, progress=False)
    a = evaluate(sweep, vector="sync", **kwargs)
    b = evaluate(sweep, vector="async", **kwargs)
    assert a["scores"] == b["scores"] and a["final_coverage"] == b["final_coverage"]
    seen = []
    res = evaluate(
        lambda o: (seen.append(o.shape), np.repeat(o[:, -1:, :2], 8, axis=1))[1],
        obs_type="state",
        n_episodes=2,
        max_steps=16,
        progress=False,
    )
    assert seen[0] == (2, 2, 6) and res["n_steps"] == [16, 16]


def test_bad_policy_output_shape_is_reported():
    with pytest.raises(ValueError, match=r"policy_fn returned shape \(2, 2\); expected \(2, 8, 2\)"):
        evaluate(lambda o: np.zeros((len(o), 2)), obs_type="keypoints", n_episodes=2, progress=False)
    with pytest.raises(ValueError, match="unknown vector 'threads'"):
        evaluate(sweep, obs_type="keypoints", n_episodes=1, vector="threads")
