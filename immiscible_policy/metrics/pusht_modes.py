"""PushT modes: which way a rollout (or a demo) turned the T, and which half of it the agent touched first.

The definitions every PushT evaluation uses (policy rollouts, the trainer's records, ``immiscible-eval``,
the demos' classification in :mod:`immiscible_policy.analysis.modes`); plain numbers in, plain numbers out.

The PushT demos are multimodal in two ways, each measured here with one definition (docs/modes.md):

**Rotation** (``rotation_mode``): which way the T is turned, from its net rotation over the rollout
(angle at the end minus at the start, unwrapped). ``cw`` when it turned clockwise *as the rollout video
shows it* by at least ``threshold``, ``ccw`` anticlockwise, ``none`` when |net rotation| < threshold.
Sign: pymunk's block angle grows clockwise on screen, because gym-pusht draws pymunk's coordinates onto
pygame's screen unflipped (``positive_y_is_up`` is False) and pygame's y points down; so a positive net
rotation is ``cw`` (tests/envs/test_pusht_modes.py checks it on rendered frames). The default threshold,
45 degrees, comes from the 206 human demos (``demo_modes``): humans turn the short way whenever the start
is less than 135 degrees from the goal, and the largest turn the "wrong" way before a committed turn is
42 degrees (one demo; 5.3 in the next), so a 45-degree net turn is a committed one and not a correction.
The question "which way" is only open when both ways are about equally long: from the 49 demo starts more
than 135 degrees from the goal, humans turn the T one way 26 times and the other way 23 times (46 of them
still the shorter way), within 15 degrees of upside down 13 cw / 7 ccw, and at the symmetric starts
(``immiscible_envs.pusht.SYMMETRIC_STARTS``, upside down) both ways are exactly equally good.

**Approach side** (``approach_side``): which half of the T the agent touches first. The *first contact* is
the first step at which the block's pose differs from its start pose by more than ``tol`` (the block only
moves when the agent touches it; ``immiscible_envs.pusht.block_moved``). At that step the agent's position
is expressed in the block's start body frame, where the T is mirror-symmetric about the local y axis (its
stem; ``immiscible_envs.pusht.KEYPOINTS_LOCAL``: the bar ends sit at x = -61 and +61): ``side_of`` says
``left`` when local x < -margin, ``right`` when local x > +margin, ``center`` in between (a push on the
stem's end or the bar's middle, which favours neither half; the agent's radius is 15 px and the stem is
30 px wide, so the default 10 px margin separates "end of the stem" from "side of the stem"), and
``none`` when the block never moved. "left"/"right" name the halves of the T in its own frame, not the
screen. The PushT env computes the same contact point every step (``info["contact_local_x"]``) with the
same two functions, so evaluation rollouts and recorded trajectories are classified alike.

Shares: dominant share = max(cw, ccw) / (cw + ccw), and the binary entropy H of the cw share (1 bit for an
even split, 0 for one mode); the left share and its entropy likewise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SIDES = ("left", "center", "right", "none")
ROTATION_MODES = ("cw", "ccw", "none")
#: The record keys' prefixes of the rotation-mode counts a policy run logs (``<prefix>cw`` ...), with titles.
MODE_PREFIXES = {"modes_": "standard starts", "sym_modes_": "symmetric starts"}
#: |net rotation| below this is ``none`` (see the module docstring for why 45 degrees).
ROTATION_THRESHOLD_DEG = 45.0


def side_of(local_x: float, margin: float = 10.0) -> str:
    """The half of the T a contact at block-frame x ``local_x`` is on: left / center / right; ``none`` for
    NaN (no contact)."""
    if local_x != local_x:
        return "none"
    return "left" if local_x < -margin else "right" if local_x > margin else "center"


def approach_side(
    agent_xy: np.ndarray, block_pose: np.ndarray, *, margin: float = 10.0, tol: float | None = None
) -> tuple[str, int, float]:
    """Classify one trajectory; returns (side, contact step or -1, local x of the agent at contact).

    Args:
        agent_xy: (T, 2) agent positions, row k = after step k (row 0 = start).
        block_pose: (T, 3) block body-origin x, y and angle (rad) at the same times.
        margin: half-width (px) of the ``center`` band around the T's mirror axis.
        tol: pose change (px or rad) that counts as the block having moved (None: the env's
            ``CONTACT_TOL``, 1e-3).
    """
    from immiscible_envs.pusht import CONTACT_TOL, block_frame_x, block_moved

    agent_xy, block_pose = np.asarray(agent_xy, float), np.asarray(block_pose, float)
    if agent_xy.ndim != 2 or agent_xy.shape[1] != 2 or block_pose.shape != (len(agent_xy), 3):
        raise ValueError(
            f"agent_xy must be (T, 2) and block_pose (T, 3); got {agent_xy.shape} and {block_pose.shape}."
        )
    moved = block_moved(block_pose, block_pose[0], CONTACT_TOL if tol is None else tol)
    if not moved.any():
        return "none", -1, float("nan")
    k = int(np.argmax(moved))
    local_x = float(block_frame_x(agent_xy[k], block_pose[0]))
    return side_of(local_x, margin), k, local_x


def rotation_mode(net_rotation: float, threshold_deg: float = ROTATION_THRESHOLD_DEG) -> str:
    """``cw`` / ``ccw`` / ``none`` for a net rotation in rad (positive = clockwise on screen, the sign of
    pymunk's angle); ``none`` when |net rotation| < ``threshold_deg``; a turn of exactly the threshold counts."""
    net = float(net_rotation)
    if not math.isfinite(net):
        raise ValueError(f"net_rotation={net_rotation!r}: use a finite angle in radians.")
    if threshold_deg < 0:
        raise ValueError(f"threshold_deg={threshold_deg}: use a non-negative angle in degrees.")
    if abs(net) < math.radians(threshold_deg):
        return "none"
    return "cw" if net > 0 else "ccw"


def net_rotation(angles: np.ndarray) -> float:
    """End minus start of a recorded angle series (rad), unwrapped: recorded angles may be wrapped to
    [0, 2 pi) (the PushT demos' are), and a step never turns the block by pi or more."""
    u = np.unwrap(np.asarray(angles, np.float64))
    return float(u[-1] - u[0])


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


def _share(a: int, b: int) -> tuple[float | None, float | None]:
    """a / (a + b) and its binary entropy; None for both when a + b = 0 (no evidence either way)."""
    return (a / (a + b), binary_entropy(a / (a + b))) if a + b else (None, None)


def mode_summary(
    rotations: Sequence[float],
    sides: Sequence[str],
    threshold_deg: float = ROTATION_THRESHOLD_DEG,
) -> dict[str, Any]:
    """The ``modes`` block of an evaluation (docs/modes.md): rotation counts, dominant share and entropy of
    the turning direction, the threshold, approach-side counts, left share and its entropy. Shares and
    entropies are None when no rollout turned (or touched a half of the T): a 0 would read as a collapse."""
    modes = [rotation_mode(r, threshold_deg) for r in rotations]
    rot = {m: modes.count(m) for m in ROTATION_MODES}
    cw_share, entropy = _share(rot["cw"], rot["ccw"])
    approach = {s: list(sides).count(s) for s in SIDES}
    left_share, approach_entropy = _share(approach["left"], approach["right"])
    return {
        "n_rollouts": len(modes),
        "rotation": rot,
        "dominant_share": None if cw_share is None else max(cw_share, 1.0 - cw_share),
        "entropy_bits": entropy,
        "threshold_deg": float(threshold_deg),
        "approach": approach,
        "approach_left_share": left_share,
        "approach_entropy_bits": approach_entropy,
    }


def flat_modes(modes: dict[str, Any], prefix: str = "modes_") -> dict[str, float | int | None]:
    """A ``modes`` block as flat numbers for a training record (loggers, metrics.csv, dashboards):
    ``<prefix>cw``, ``ccw``, ``none``, ``dominant_share``, ``entropy_bits``, ``approach_left_share``,
    ``approach_entropy_bits`` (None where the block has None: the dashboards skip it)."""
    keys = ("dominant_share", "entropy_bits", "approach_left_share", "approach_entropy_bits")
    return {
        **{f"{prefix}{m}": int(modes["rotation"][m]) for m in ROTATION_MODES},
        **{f"{prefix}{k}": modes[k] for k in keys},
    }


def mode_line(record: dict[str, Any], prefix: str = "modes_") -> str:
    """The console's short form of a record's flat mode keys, e.g. ``" turns cw/ccw/none 30/12/8 (dominant
    0.71)"``; empty when the record has none (not a PushT evaluation)."""
    if f"{prefix}cw" not in record:
        return ""
    counts = "/".join(str(record[f"{prefix}{m}"]) for m in ROTATION_MODES)
    dominant = record.get(f"{prefix}dominant_share")
    return f" turns cw/ccw/none {counts}" + ("" if dominant is None else f" (dominant {dominant:.2f})")
