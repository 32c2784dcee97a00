"""evaluate() reports each rollout's rotation mode and approach side, and rolls out from the symmetric starts
on request (docs/modes.md). Dummy policies, 40-48 env steps: a few seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from immiscible_envs.pusht import SYMMETRIC_STARTS

from immiscible_policy.metrics.pusht_modes import rotation_mode
from immiscible_policy.policy.rollout import evaluate

MODE_KEYS = {
    "n_rollouts",
    "rotation",
    "dominant_share",
    "entropy_bits",
    "threshold_deg",
    "approach",
    "approach_left_share",
    "approach_entropy_bits",
}


def hold(obs):
    return np.repeat(obs[:, -1:, -2:], 8, axis=1)


def sweep(obs):
    """Drive the agent at the block's first keypoint and past it (moves the block from most starts)."""
    agent, target = obs[:, -1, -2:], obs[:, -1, 0:2]
    steps = np.linspace(0.2, 1.6, 8)[None, :, None]
    return np.clip(agent[:, None] + steps * (target - agent)[:, None], 0, 512)


def _consistent(res: dict, n: int) -> None:
    for key in ("rotation", "rotation_mode", "approach_side"):
        assert len(res[key]) == n, key
    m = res["modes"]
    assert set(m) == MODE_KEYS and m["n_rollouts"] == n and m["threshold_deg"] == 45.0
    assert [rotation_mode(r) for r in res["rotation"]] == res["rotation_mode"]
    assert m["rotation"] == {k: res["rotation_mode"].count(k) for k in ("cw", "ccw", "none")}
    assert m["approach"] == {k: res["approach_side"].count(k) for k in ("left", "center", "right", "none")}


def test_standard_evaluation_reports_modes():
    still = evaluate(hold, obs_type="keypoints", n_episodes=4, max_steps=40, progress=False)
    assert still["starts"] == "standard" and still["seeds"] == [100000, 100001, 100002, 100003]
    _consistent(still, 4)
    assert still["rotation_mode"] == ["none"] * 4 and still["modes"]["dominant_share"] is None
    moved = evaluate(sweep, obs_type="keypoints", n_episodes=4, max_steps=40, progress=False)
    _consistent(moved, 4)
    assert np.abs(moved["rotation"]).max() > math.radians(45)  # the sweep turns the T at some start
    assert "none" not in moved["approach_side"]  # ... and touches it at every one
    assert moved["scores"] != still["scores"]


def _open_loop(corners_of, n_steps: int, mirrored: bool):
    """A policy replaying, for row i, targets along legs between block-frame points of symmetric start i
    (its mirror image with ``mirrored``); rows are episodes 0..4, none of which ends early."""
    paths = []
    for start in SYMMETRIC_STARTS:
        c, s = np.cos(start[4]), np.sin(start[4])
        pts = [start[2:4] + np.array([[c, -s], [s, c]]) @ np.asarray(p, float) for p in corners_of(start)]
        path = [a + t * (b - a) for a, b in zip(pts[:-1], pts[1:]) for t in np.linspace(0, 1, 12)]
        path += [path[-1]] * (n_steps - len(path))
        path = np.array(path[:n_steps])
        paths.append(np.column_stack([512 - path[:, 1], 512 - path[:, 0]]) if mirrored else path)
    calls = []

    def policy(obs):
        k = len(calls)
        calls.append(obs.shape[0])
        return np.stack([p[8 * k : 8 * k + 8] for p in paths[: obs.shape[0]]])

    return policy


def _corners(start):
    behind = np.dot(start[:2] - start[2:4], [-np.sin(start[4]), np.cos(start[4])]) < 0
    return (
        [(45, -45), (45, -10), (50, 80), (50, 200)]
        if behind
        else [(0, 170), (40, 150), (40, 115), (-120, 115)]
    )


def test_symmetric_starts_turn_mirrored_policies_the_other_way():
    """At the symmetric starts a push and its mirror image are equally good: the same rollouts, turned the
    other way; the counts swap and the dominant share and entropy are the same."""
    kw = dict(
        obs_type="keypoints", n_episodes=5, start_seed=0, max_steps=48, progress=False, starts="symmetric"
    )
    right = evaluate(_open_loop(_corners, 48, mirrored=False), **kw)
    left = evaluate(_open_loop(_corners, 48, mirrored=True), **kw)
    for res in (right, left):
        assert res["starts"] == "symmetric" and res["seeds"] == [0, 1, 2, 3, 4] and res["n_steps"] == [48] * 5
        _consistent(res, 5)
    # the same to float32 rounding (the vector env carries actions as float32)
    np.testing.assert_allclose(right["rotation"], -np.array(left["rotation"]), rtol=0, atol=1e-5)
    assert right["modes"]["rotation"]["cw"] >= 3 and right["modes"]["rotation"]["ccw"] == 0
    swap = {"cw": "ccw", "ccw": "cw", "none": "none", "left": "right", "right": "left", "center": "center"}
    assert left["rotation_mode"] == [swap[m] for m in right["rotation_mode"]]
    assert left["approach_side"] == [swap[s] for s in right["approach_side"]]
    assert right["modes"]["dominant_share"] == left["modes"]["dominant_share"] == 1.0
    assert right["scores"] == pytest.approx(left["scores"], abs=1e-5)


def test_unknown_starts_is_one_line():
    with pytest.raises(ValueError, match="unknown starts 'mirror'; valid: standard, symmetric"):
        evaluate(hold, obs_type="keypoints", n_episodes=1, max_steps=8, progress=False, starts="mirror")
