"""PushT modes: does a policy keep *both* ways of solving PushT, or collapse onto one?

The definitions (rotation mode, approach side, shares) live in :mod:`immiscible_policy.metrics.pusht_modes`,
the one copy every evaluation uses; this module applies them to the demos (``demo_modes``) and to a
policy's rollouts until first contact (``rollout_modes``).

``rollout_modes`` rolls a policy out M times from each of a few fixed test starts (the M rollouts
differ only in the sampling noise: one seeded generator draws different noise for each row of the batch)
until first contact, and classifies each rollout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from immiscible_policy.metrics.pusht_modes import (
    ROTATION_THRESHOLD_DEG,
    approach_side,
    mode_summary,
    net_rotation,
    rotation_mode,
    summarize,
)

#: Demo starts farther than this from the goal angle are where the turning direction is a real choice.
FAR_FROM_GOAL_DEG = 135.0
#: Demo starts within this of upside down (pi from the goal): the symmetric starts' angle, so these are the
#: demos a policy at those starts imitates; the wider far set mostly turns the short way, so its split
#: mirrors on which side of upside down its starts lie (docs/modes.md).
UPSIDE_DOWN_DEG = 15.0


def demo_modes(
    zarr_path: str | os.PathLike | None = None,
    *,
    threshold_deg: float = ROTATION_THRESHOLD_DEG,
    margin: float = 10.0,
    far_deg: float = FAR_FROM_GOAL_DEG,
    upside_down_deg: float = UPSIDE_DOWN_DEG,
) -> dict[str, Any]:
    """Classify every PushT demo (``data/state`` (T, 5): agent xy, block xy, angle; ``meta/episode_ends``)
    by net rotation and approach side with the evaluation's definitions, and report the split.

    Rotation: the recorded angle (wrapped to [0, 2 pi) in the demos) unwrapped, end minus start. Approach
    side: from the first recorded step at which the block is at rest (moves by at most ``tol`` = 1e-3 to
    the next step). Why not from step 0: 22 of the 206 recordings begin while the block is still sliding
    from the episode's reset (with the agent up to 300 px away), which ``approach_side`` would take for a
    contact; in the other 184 the block is at rest at step 0 and nothing changes.

    Returns ``{"path", "n_episodes", "threshold_deg", "n_sliding_at_start", "all": summary,
    "far_from_goal": summary with "min_deg" (the starts more than ``far_deg`` from the goal angle: where
    the direction is a choice), "max_opposite_turn_deg" (the three largest turns against a committed
    demo's final direction before it: the evidence for the threshold), "upside_down": summary with
    "max_deg" (the starts within ``upside_down_deg`` of upside down, the symmetric starts' angle),
    "episodes": [{"rotation_deg", "start_from_goal_deg", "mode", "approach", "long_way"}, ...]}``
    (summaries as :func:`mode_summary` plus "long_way": {"cw", "ccw"}, the turns against the shorter way
    to the goal angle). ``zarr_path``
    None: the trainer's lookup (``$IMMISCIBLE_PUSHT_ZARR``, the shared store, else the low-dim demos
    embedded in the package: the same arrays); ``"embedded"`` picks those.
    """
    from immiscible_envs.pusht import CONTACT_TOL, GOAL_POSE

    from immiscible_policy.policy.dataset import open_pusht, resolve_pusht_source

    zarr_path = resolve_pusht_source(zarr_path)  # the trainer's lookup: path, env var, shared, embedded
    buf = open_pusht(zarr_path, ["state"])
    state = np.asarray(buf.data["state"], np.float64)
    ends = np.asarray(buf.episode_ends)
    episodes, nets, from_goal, opposite, sliding = [], [], [], [], 0
    for lo, hi in zip(np.concatenate([[0], ends[:-1]]), ends):
        s = state[lo:hi]
        pose = np.column_stack([s[:, 2:4], np.unwrap(s[:, 4])])
        net = net_rotation(s[:, 4])
        still = np.abs(np.diff(pose, axis=0)).max(axis=1) <= CONTACT_TOL
        rest = int(np.argmax(still)) if still.any() else 0
        sliding += rest > 0
        side = approach_side(s[rest:, :2], pose[rest:], margin=margin)[0]
        from_goal.append(float((s[0, 4] - GOAL_POSE[2] + np.pi) % (2 * np.pi) - np.pi))
        mode = rotation_mode(net, threshold_deg)
        short = "ccw" if from_goal[-1] > 0 else "cw"  # a positive net rotation (cw) raises the angle
        nets.append(net)
        if mode != "none":
            turned = np.sign(net) * (pose[:, 2] - pose[0, 2])
            opposite.append(float(np.degrees(max(0.0, -turned.min()))))
        episodes.append(
            {
                "rotation_deg": round(math.degrees(net), 2),
                "start_from_goal_deg": round(math.degrees(from_goal[-1]), 2),
                "mode": mode,
                "approach": side,
                "long_way": mode not in ("none", short),
            }
        )
    far = [i for i, a in enumerate(from_goal) if abs(a) > math.radians(far_deg)]
    upside_down = [i for i, a in enumerate(from_goal) if abs(a) >= math.pi - math.radians(upside_down_deg)]

    def summary(rows: Sequence[int]) -> dict[str, Any]:
        out = mode_summary([nets[i] for i in rows], [episodes[i]["approach"] for i in rows], threshold_deg)
        picked = [episodes[i]["mode"] for i in rows if episodes[i]["long_way"]]
        return {**out, "long_way": {m: picked.count(m) for m in ("cw", "ccw")}}

    return {
        "path": os.path.normpath(str(zarr_path)),
        "n_episodes": len(episodes),
        "threshold_deg": float(threshold_deg),
        "n_sliding_at_start": int(sliding),
        "all": summary(range(len(episodes))),
        "far_from_goal": {"min_deg": float(far_deg), **summary(far)},
        "upside_down": {"max_deg": float(upside_down_deg), **summary(upside_down)},
        "max_opposite_turn_deg": [round(d, 2) for d in sorted(opposite)[-3:][::-1]],
        "episodes": episodes,
    }


def clear_starts(n: int, first_seed: int = 100000, min_gap: float = 50.0, max_tries: int = 1000) -> list[int]:
    """The first ``n`` test seeds whose start leaves the agent > ``min_gap`` px from every block keypoint.

    Starts where the agent begins on or next to the block are skipped: their first contact is decided by
    the start, not by the policy.
    """
    from immiscible_envs.pusht import BLOCK_COG, block_keypoints, legacy_test_start

    seeds = []
    for seed in range(first_seed, first_seed + max_tries):
        ax, ay, bx, by, theta = legacy_test_start(seed)
        # the env places the block by position-then-angle: origin = passed + (45 sin, 45 (1 - cos))
        origin = np.array([bx + BLOCK_COG[1] * np.sin(theta), by + BLOCK_COG[1] * (1 - np.cos(theta))])
        kp = block_keypoints(origin, theta)
        if np.linalg.norm(kp - np.array([ax, ay]), axis=1).min() > min_gap:
            seeds.append(seed)
            if len(seeds) == n:
                return seeds
    raise ValueError(
        f"only {len(seeds)} of the first {max_tries} test seeds have a clear start; lower n_states."
    )


def rollout_modes(
    policy_fn: Callable[[np.ndarray], np.ndarray],
    seed: int,
    n_rollouts: int,
    *,
    obs_type: str = "keypoints",
    n_obs_steps: int = 2,
    max_steps: int = 200,
    margin: float = 10.0,
) -> dict:
    """Roll ``policy_fn`` out ``n_rollouts`` times from test start ``seed`` until first contact.

    ``policy_fn(obs_history (m, n_obs_steps, obs_dim)) -> (m, n_action_steps, 2)`` is called with the
    still-running rollouts only (the policy's own generator makes each row's noise different).
    Returns the summary plus per-rollout sides, contact steps and local x.
    """
    from immiscible_envs.pusht import PushTEnv, block_moved

    envs = [PushTEnv(obs_type=obs_type, render_mode=None) for _ in range(n_rollouts)]
    hist, traj = [], []
    for env in envs:
        obs, _ = env.reset(seed=int(seed))
        hist.append([obs] * n_obs_steps)
        traj.append([env.state])
    active = list(range(n_rollouts))
    steps = 0
    while active and steps < max_steps:
        actions = np.asarray(policy_fn(np.stack([np.stack(hist[i][-n_obs_steps:]) for i in active])))
        still = []
        for row, i in enumerate(active):
            touched = False
            for a in actions[row][: max_steps - steps]:
                obs, _, terminated, _, _ = envs[i].step(a)
                hist[i].append(obs)
                traj[i].append(envs[i].state)
                if block_moved(traj[i][-1][2:], traj[i][0][2:]) or terminated:
                    touched = True
                    break
            if not touched:
                still.append(i)
        steps += actions.shape[1]
        active = still
    for env in envs:
        env.close()
    out = [approach_side(np.array(t)[:, :2], np.array(t)[:, 2:], margin=margin) for t in traj]
    sides = [o[0] for o in out]
    return {
        "seed": int(seed),
        **summarize(sides),
        "sides": sides,
        "contact_step": [o[1] for o in out],
        "contact_local_x": [None if math.isnan(o[2]) else round(o[2], 2) for o in out],
    }
