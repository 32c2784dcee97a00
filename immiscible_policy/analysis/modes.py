"""PushT approach modes: does a policy still choose *both* sides of the T from one start?

The PushT demos are multimodal: from the same start a human pushes the T either on one half or on the
mirror half (Diffusion Policy's "left or right" example). A policy that collapsed to one mode would push
one side every time. Immiscible pairing should not change this if the denoising map stays a bijection.

Definition (``approach_side``): the *first contact* is the first step at which the block's pose differs
from its start pose (the block only moves when the agent touches it). At that step the agent's position
is expressed in the block's start body frame, where the T is mirror-symmetric about the local y axis
(its stem; see ``immiscible_envs.pusht.KEYPOINTS_LOCAL``: the bar ends sit at x = -61 and +61). The
side is ``left`` when local x < -margin, ``right`` when local x > +margin, ``center`` in between (a push
on the stem's end or the bar's middle, which favours neither half; the agent's radius is 15 px and the
stem is 30 px wide, so the default 10 px margin separates "end of the stem" from "side of the stem"),
and ``none`` when the block never moved. "left"/"right" name the halves of the T in its own frame, not
the screen. Mode share of one start = left / (left + right); its binary entropy H is 1 bit for an even
split and 0 for a single mode.

``rollout_modes`` rolls a policy out M times from each of a few fixed test starts (the M rollouts
differ only in the sampling noise: one seeded generator draws different noise for each row of the batch)
until first contact, and classifies each rollout.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

SIDES = ("left", "center", "right", "none")


def approach_side(
    agent_xy: np.ndarray, block_pose: np.ndarray, *, margin: float = 10.0, tol: float = 1e-3
) -> tuple[str, int, float]:
    """Classify one trajectory; returns (side, contact step or -1, local x of the agent at contact).

    Args:
        agent_xy: (T, 2) agent positions, row k = after step k (row 0 = start).
        block_pose: (T, 3) block body-origin x, y and angle (rad) at the same times.
        margin: half-width (px) of the ``center`` band around the T's mirror axis.
        tol: pose change (px or rad) that counts as the block having moved.
    """
    agent_xy, block_pose = np.asarray(agent_xy, float), np.asarray(block_pose, float)
    if agent_xy.ndim != 2 or agent_xy.shape[1] != 2 or block_pose.shape != (len(agent_xy), 3):
        raise ValueError(
            f"agent_xy must be (T, 2) and block_pose (T, 3); got {agent_xy.shape} and {block_pose.shape}."
        )
    moved = np.abs(block_pose - block_pose[0]).max(axis=1) > tol
    if not moved.any():
        return "none", -1, float("nan")
    k = int(np.argmax(moved))
    x0, y0, theta = block_pose[0]
    dx, dy = agent_xy[k, 0] - x0, agent_xy[k, 1] - y0
    local_x = float(np.cos(theta) * dx + np.sin(theta) * dy)  # R(theta)^T (agent - origin), x part
    side = "left" if local_x < -margin else "right" if local_x > margin else "center"
    return side, k, local_x


def binary_entropy(p: float) -> float:
    """H(p) in bits: 0 for p in {0, 1}, 1 for p = 0.5."""
    if not 0.0 < p < 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def summarize(sides: list[str]) -> dict:
    """Counts per side, left share among sided contacts, and its binary entropy (NaN share if none)."""
    counts = {s: sides.count(s) for s in SIDES}
    sided = counts["left"] + counts["right"]
    share = counts["left"] / sided if sided else float("nan")
    return {
        "counts": counts,
        "left_share": share,
        "binary_entropy_bits": binary_entropy(share) if sided else 0.0,
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
    from immiscible_envs.pusht import PushTEnv

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
                if np.abs(traj[i][-1][2:] - traj[i][0][2:]).max() > 1e-3 or terminated:
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
