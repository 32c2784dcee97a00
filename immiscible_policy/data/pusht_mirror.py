"""PushT demos reflected about the goal T's symmetry axis (``task.mirror=true``): twice the demos, no new data.

Why: a start that is the mirror image of another is only treated symmetrically by a policy when its training
data is symmetric, and the 206 human demos are not (the demonstrators favoured some approaches). The task is:
the T is mirror-symmetric about its stem, the goal pose (256, 256, pi/4) puts that stem on the diagonal
y = 512 - x, and the physics (no gravity, a round agent, a T made of two symmetric boxes) commutes with the
reflection. So each demo reflected is another demo the env would produce, step for step
(``tests/policy/test_pusht_mirror.py`` replays them; docs/pusht_mirror.md lists the exceptions).

The reflection M(x, y) = (512 - y, 512 - x) has the linear part S = [[0, -1], [-1, 0]] = R(pi/2) F with
F = diag(-1, 1) the T's own reflection (body frame), so a body pose (b, theta) maps to (M(b), pi/2 - theta):

    state  (ax, ay, bx, by, theta) -> (512 - ay, 512 - ax, 512 - by, 512 - bx, pi/2 - theta)
    action (x, y)                  -> (512 - y, 512 - x)

Both are involutions (theta is not wrapped, so pi/2 - (pi/2 - theta) = theta up to rounding). The block's
keypoint observations are recomputed from the reflected pose (:func:`immiscible_envs.pusht.block_keypoints`),
not reflected: the 9 keypoints are fixed body points that are *not* a symmetric set (4 of them have no
mirror partner within 1 px), so reflecting them would give observations the env never produces.

The episode split must keep a demo and its reflection together (a validation demo whose reflection is
trained on leaks): :func:`tile_episode_mask` spreads a mask over the originals to both copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from immiscible_envs.pusht import GOAL_POSE  # the goal T (x, y, angle): its stem is the axis y = 512 - x

__all__ = [
    "GOAL_POSE",
    "MirroredDemos",
    "mirror_action",
    "mirror_demos",
    "mirror_keypoints",
    "mirror_state",
    "tile_episode_mask",
]

_SIDE = 512.0  # the arena's side in pixels: the axis y = _SIDE - x


def mirror_state(state: np.ndarray) -> np.ndarray:
    """(..., 5) [agent x, y, block x, y, angle] -> the reflected state, float64 (angle ``pi/2 - theta``)."""
    s = np.asarray(state, dtype=np.float64)
    if s.shape[-1:] != (5,):
        raise ValueError(f"mirror_state needs (..., 5) [agent x, y, block x, y, angle], got {s.shape}")
    return np.stack(
        [_SIDE - s[..., 1], _SIDE - s[..., 0], _SIDE - s[..., 3], _SIDE - s[..., 2], np.pi / 2 - s[..., 4]],
        axis=-1,
    )


def mirror_action(action: np.ndarray) -> np.ndarray:
    """(..., 2) agent target xy (pixels) -> the reflected target ``(512 - y, 512 - x)``, float64."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape[-1:] != (2,):
        raise ValueError(f"mirror_action needs (..., 2) target xy, got {a.shape}")
    return np.stack([_SIDE - a[..., 1], _SIDE - a[..., 0]], axis=-1)


def mirror_keypoints(mirrored_state: np.ndarray) -> np.ndarray:
    """(..., 9, 2) block keypoints of an (already reflected) state, as the env observes them (float64)."""
    from immiscible_envs.pusht import block_keypoints  # the env's geometry; a layer above data/

    s = np.asarray(mirrored_state, dtype=np.float64)
    return block_keypoints(s[..., 2:4], s[..., 4])


@dataclass(frozen=True)
class MirroredDemos:
    """The originals followed by their reflections (episode ``e + n_original`` reflects episode ``e``).

    ``state`` (2T, 5) float64, ``action`` (2T, 2) float64, ``keypoint`` (2T, 9, 2) float64 or None,
    ``episode_ends`` (2E,) int64, ``original`` (2E,) int64: the original episode of every episode.
    """

    state: np.ndarray
    action: np.ndarray
    keypoint: np.ndarray | None
    episode_ends: np.ndarray
    original: np.ndarray

    @property
    def n_original(self) -> int:
        return len(self.episode_ends) // 2


def mirror_demos(
    state: np.ndarray, action: np.ndarray, episode_ends: np.ndarray, keypoint: np.ndarray | None = None
) -> MirroredDemos:
    """Append the reflection of every episode of a PushT store (``data/state``, ``data/action``,
    ``meta/episode_ends``; ``data/keypoint`` when keypoint observations are wanted, else None).

    The originals come first and unchanged (so their windows, and a split over them, stay today's); the
    reflected steps follow in the same episode order, their keypoints recomputed from the reflected pose.
    """
    state, action = np.asarray(state), np.asarray(action)
    ends = np.asarray(episode_ends, dtype=np.int64)
    n_steps = len(state)
    if len(action) != n_steps or (len(ends) and ends[-1] != n_steps):
        raise ValueError(
            f"mirror_demos: state has {n_steps} steps, action {len(action)}, episode_ends ends at "
            f"{ends[-1] if len(ends) else 0}; pass the arrays of one store"
        )
    mirrored = mirror_state(state)
    keypoints = None
    if keypoint is not None:
        keypoints = np.concatenate(
            [np.asarray(keypoint, dtype=np.float64).reshape(n_steps, -1, 2), mirror_keypoints(mirrored)]
        )
    return MirroredDemos(
        state=np.concatenate([state.astype(np.float64), mirrored]),
        action=np.concatenate([action.astype(np.float64), mirror_action(action)]),
        keypoint=keypoints,
        episode_ends=np.concatenate([ends, ends + n_steps]),
        original=np.tile(np.arange(len(ends), dtype=np.int64), 2),
    )


def tile_episode_mask(mask: np.ndarray, copies: int = 2) -> np.ndarray:
    """A per-original episode mask (E,) spread to ``copies`` tiled copies (copies * E,): the copies of a
    demo always land in the same split, so no reflection of a validation demo is trained on."""
    return np.tile(np.asarray(mask, dtype=bool), copies)
