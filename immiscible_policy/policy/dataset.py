"""Low-dim training windows (PushT here; robomimic reuses the base) with diffusion_policy's conventions.

Why these conventions: a policy conditioned on ``n_obs_steps`` observations predicts a ``horizon``-long
action chunk starting at the first observation step and executes ``n_action_steps`` of it. diffusion_policy
samples every window position inside an episode, letting a window hang over the episode start by
``pad_before = n_obs_steps - 1`` steps and over its end by ``pad_after = n_action_steps - 1`` steps, and fills
the overhang by repeating the first/last frame (edge padding). Matching this exactly keeps results comparable
with the paper's PushT numbers.

Shapes (PushT): horizon H=16, obs_dim 20 ("keypoints") or 6 ("state"), action_dim 2 (pixels).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch

from immiscible_policy.data import ReplayBuffer, ReplayBufferError
from immiscible_policy.data.pusht_lowdim import EMBEDDED_PUSHT, embedded_sha256, open_embedded_pusht
from immiscible_policy.data.pusht_mirror import mirror_demos
from immiscible_policy.policy.normalizer import MinMaxNormalizer

__all__ = [
    "EMBEDDED",
    "OBS_TYPES",
    "LowdimWindowDataset",
    "PushTImageDataset",
    "PushTLowdimDataset",
    "SequenceSampler",
    "default_pusht_zarr",
    "describe_source",
    "downsample_mask",
    "get_val_mask",
    "open_pusht",
    "pusht_obs",
    "resolve_pusht_source",
    "shared_pusht_zarr",
]

#: obs_type -> obs_dim. keypoints: 9 block keypoints (x, y) flattened + agent xy (diffusion_policy's
#: pusht lowdim order); state: agent xy, block xy, sin(angle), cos(angle). (``"image"``, frames + agent xy,
#: is :class:`PushTImageDataset`'s.)
OBS_TYPES = {"keypoints": 20, "state": 6}


def pusht_obs(state: np.ndarray, keypoint: np.ndarray | None, obs_type: str) -> np.ndarray:
    """Build observations from recorded arrays.

    Args:
        state: (T, 5) agent x, y, block x, y, block angle (rad).
        keypoint: (T, 9, 2) block keypoints (needed for ``"keypoints"``).
        obs_type: ``"keypoints"`` -> (T, 20) or ``"state"`` -> (T, 6), float32.
    """
    _check_obs_type(obs_type)
    state = np.asarray(state)
    if obs_type == "keypoints":
        kp = np.asarray(keypoint).reshape(len(state), -1)
        obs = np.concatenate([kp, state[:, :2]], axis=-1)
    else:
        angle = state[:, 4:5].astype(np.float64)
        obs = np.concatenate([state[:, :4], np.sin(angle), np.cos(angle)], axis=-1)
    return obs.astype(np.float32)


def _check_obs_type(obs_type: str, valid=OBS_TYPES) -> None:
    if obs_type not in valid:
        raise ValueError(f"unknown obs_type {obs_type!r}; valid: {sorted(valid)}")


def get_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """(n_episodes,) bool, True for validation episodes; diffusion_policy's rule (>=1 val, >=1 train)."""
    val_mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0:
        return val_mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    rng = np.random.default_rng(seed=seed)
    val_mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return val_mask


def downsample_mask(mask: np.ndarray, max_n: int | None, seed: int = 0) -> np.ndarray:
    """Keep a seeded random subset of at most ``max_n`` of the True entries (diffusion_policy's rule)."""
    if max_n is None or mask.sum() <= max_n:
        return mask.copy()
    idxs = np.nonzero(mask)[0]
    rng = np.random.default_rng(seed=seed)
    keep = idxs[rng.choice(len(idxs), size=int(max_n), replace=False)]
    out = np.zeros_like(mask)
    out[keep] = True
    return out


class SequenceSampler:
    """All fixed-length windows of the selected episodes, as a matrix of buffer step indices.

    ``indices[w, k]`` is the buffer row for position k of window w: a window starting at episode-relative
    step s covers s .. s+horizon-1, with s from -pad_before to len-horizon+pad_after, and out-of-episode
    positions clamped to the first/last step (edge repetition). Gathering ``array[indices]`` gives
    (n_windows, horizon, ...) in one numpy call.
    """

    def __init__(
        self,
        episode_ends: np.ndarray,
        horizon: int,
        pad_before: int = 0,
        pad_after: int = 0,
        episode_mask: np.ndarray | None = None,
    ):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        episode_ends = np.asarray(episode_ends, dtype=np.int64)
        if episode_mask is None:
            episode_mask = np.ones(len(episode_ends), dtype=bool)
        episode_mask = np.asarray(episode_mask, dtype=bool)
        if episode_mask.shape != episode_ends.shape:
            raise ValueError(
                f"episode_mask shape {episode_mask.shape} != episode_ends shape {episode_ends.shape}"
            )
        pad_before = min(max(pad_before, 0), horizon - 1)
        pad_after = min(max(pad_after, 0), horizon - 1)
        self.horizon, self.pad_before, self.pad_after = horizon, pad_before, pad_after
        starts = np.concatenate([[0], episode_ends[:-1]])
        offsets = np.arange(horizon)
        rows, episodes = [], []
        for e in np.nonzero(episode_mask)[0]:
            begin, length = int(starts[e]), int(episode_ends[e] - starts[e])
            first = np.arange(-pad_before, length - horizon + pad_after + 1)
            if len(first) == 0:
                continue
            rel = np.clip(first[:, None] + offsets[None, :], 0, length - 1)
            rows.append(rel + begin)
            episodes.append(np.full(len(first), e))
        self.indices = (
            np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, horizon), dtype=np.int64)
        )
        #: (n_windows,) episode of each window
        self.window_episode = np.concatenate(episodes) if episodes else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def sample_sequence(self, arrays: dict[str, np.ndarray], idx: int) -> dict[str, np.ndarray]:
        """Window ``idx`` of each array: key -> (horizon, ...)."""
        rows = self.indices[idx]
        return {k: v[rows] for k, v in arrays.items()}


class LowdimWindowDataset(torch.utils.data.Dataset):
    """Windows of (obs, action) over per-step arrays, split train/val by episode: the part every task shares.

    Why a base: PushT and robomimic differ only in where their per-step arrays come from; the split rule,
    the window sampler, the gathering and the normaliser fit must be the same code, or the two tasks' numbers
    stop being comparable. A task builds its ``obs`` (T, obs_dim) and ``action`` (T, A) arrays and the
    episode ends, then calls :meth:`_init_windows`.

    ``dataset[i]`` -> {"obs": float32 tensor (horizon, obs_dim), "action": float32 tensor (horizon, A)},
    unnormalised (env units). obs[k] is the state before action[k]; a policy conditions on
    obs[:n_obs_steps] and is trained on the whole action window.
    """

    def _init_windows(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        episode_ends: np.ndarray,
        *,
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        val_ratio: float,
        seed: int,
        max_train_episodes: int | None,
        n_copies: int = 1,
    ) -> None:
        """``n_copies`` > 1: the episodes are that many tiled copies of the same demos (PushT's mirroring:
        the originals, then their reflections). The split and ``max_train_episodes`` are drawn over the demos
        and shared by every copy, so no copy of a validation demo is trained on and the originals' split is
        the one ``n_copies=1`` draws."""
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.val_ratio, self.seed, self.max_train_episodes = val_ratio, seed, max_train_episodes
        self.obs, self.action = obs, action
        self.episode_ends = np.asarray(episode_ends, dtype=np.int64)
        n_demos, rest = divmod(len(self.episode_ends), n_copies)
        if rest:
            raise ValueError(f"{len(self.episode_ends)} episodes are not {n_copies} copies of the same demos")
        val_mask = get_val_mask(n_demos, val_ratio, seed)
        train_mask = downsample_mask(~val_mask, max_train_episodes, seed)
        self.n_copies = n_copies
        self.val_mask, self.train_mask = np.tile(val_mask, n_copies), np.tile(train_mask, n_copies)
        self._select(self.train_mask)

    def _select(self, episode_mask: np.ndarray) -> None:
        """Sample windows from the episodes in ``episode_mask`` only."""
        self.episode_mask = episode_mask
        self.sampler = SequenceSampler(
            self.episode_ends,
            horizon=self.horizon,
            pad_before=self.n_obs_steps - 1,
            pad_after=self.n_action_steps - 1,
            episode_mask=episode_mask,
        )

    def get_validation_dataset(self) -> LowdimWindowDataset:
        """Same arrays and settings (shared, not copied), windows from the validation episodes only."""
        val = copy.copy(self)
        val._select(self.val_mask)
        return val

    def conditioning_windows(self) -> tuple[dict[str, torch.Tensor], str]:
        """(windows, split): the windows an analysis conditions a trained policy on, those of the validation
        episodes (``"validation"``), or the training windows (``"train"``) for a run without validation
        episodes (``val_ratio=0``)."""
        val = self.get_validation_dataset().all_windows()
        if val["obs"].shape[0]:
            return val, "validation"
        return self.all_windows(), "train"

    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[-1])

    @property
    def action_dim(self) -> int:
        return int(self.action.shape[-1])

    @property
    def episodes(self) -> np.ndarray:
        """Indices of the episodes this dataset samples from."""
        return np.nonzero(self.episode_mask)[0]

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        rows = self.sampler.indices[idx]
        return {"obs": torch.from_numpy(self.obs[rows]), "action": torch.from_numpy(self.action[rows])}

    def all_windows(self) -> dict[str, torch.Tensor]:
        """Every window at once: {"obs": (N, horizon, obs_dim), "action": (N, horizon, A)} float32.

        Low-dim sets are small (PushT ~25k windows, ~35 MB; 200 Lift demos ~10k), so a trainer can index
        random batches from these tensors directly, which is far faster than a DataLoader on 2 cores.
        """
        rows = self.sampler.indices
        return {"obs": torch.from_numpy(self.obs[rows]), "action": torch.from_numpy(self.action[rows])}

    def _steps(self, mask: np.ndarray) -> np.ndarray:
        """Buffer rows of every step of the episodes in ``mask``."""
        starts = np.concatenate([[0], self.episode_ends[:-1]])
        return np.concatenate([np.arange(starts[e], self.episode_ends[e]) for e in np.nonzero(mask)[0]])

    def get_normalizer(self) -> MinMaxNormalizer:
        """Min-max normaliser for "obs" and "action", fitted on the train episodes' steps only."""
        rows = self._steps(self.train_mask)
        return MinMaxNormalizer().fit({"obs": self.obs[rows], "action": self.action[rows]})


#: the environment variable naming the PushT zarr store
PUSHT_ZARR_ENV = "IMMISCIBLE_PUSHT_ZARR"
#: :attr:`PushTLowdimDataset.source` when the demos come from the copy inside the package
EMBEDDED = "embedded"
#: where to get the full store (frames included): Diffusion Policy's training data
PUSHT_ZIP_URL = "https://diffusion-policy.cs.columbia.edu/data/training/pusht.zip"


_NO_FRAMES = (
    "task=pusht_image needs the full PushT demos with frames (data/img), which the embedded low-dim copy "
    "lacks ({where}): download " + PUSHT_ZIP_URL + " (Diffusion Policy's training data), unzip it and pass "
    "task.dataset_path=PATH/pusht_cchi_v7_replay.zarr or set " + PUSHT_ZARR_ENV + "=PATH"
)


def shared_pusht_zarr() -> str:
    """``../shared/data/pusht/pusht_cchi_v7_replay.zarr`` beside the project (the development machines' copy)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(
        os.path.join(here, "..", "..", "..", "shared", "data", "pusht", "pusht_cchi_v7_replay.zarr")
    )


def default_pusht_zarr() -> str:
    """The full zarr store to look for: ``$IMMISCIBLE_PUSHT_ZARR`` when set, else the shared one.

    Tests that need the frames (or the store itself) skip when this path is absent; the low-dim tasks
    fall back to the embedded copy instead (:func:`resolve_pusht_source`).
    """
    return os.environ.get(PUSHT_ZARR_ENV) or shared_pusht_zarr()


def resolve_pusht_source(dataset_path: str | os.PathLike | None = None, *, frames: bool = False) -> str:
    """Where the PushT demos come from: a zarr path, or :data:`EMBEDDED` (the low-dim copy in the package).

    Order: an explicit ``dataset_path`` (``task.dataset_path``), then ``$IMMISCIBLE_PUSHT_ZARR``, then the
    shared store beside the project, then the embedded copy; either of the first two may also say
    ``embedded`` to pick that copy where a store exists. Why a path that is named but does not exist is
    never replaced by the embedded copy: a typo would silently train on other data than asked for. An
    explicit path is opened as given (a missing one is the store's one-line error naming it); a missing
    ``$IMMISCIBLE_PUSHT_ZARR`` is refused here. ``frames=True`` (``task=pusht_image``): the embedded copy
    has no frames, so a missing store is a one-line error saying where to get it.
    """
    if dataset_path is not None:
        path, named = str(dataset_path), "task.dataset_path"
    elif os.environ.get(PUSHT_ZARR_ENV):
        path, named = os.environ[PUSHT_ZARR_ENV], PUSHT_ZARR_ENV
    else:
        shared = shared_pusht_zarr()
        if os.path.exists(shared):
            return shared
        if frames:
            raise ReplayBufferError(_NO_FRAMES.format(where=f"no store at {shared}"))
        return EMBEDDED
    if path == EMBEDDED:
        if frames:
            raise ReplayBufferError(_NO_FRAMES.format(where=f"{named}={EMBEDDED}"))
        return EMBEDDED
    if not os.path.exists(path):
        if frames:
            raise ReplayBufferError(_NO_FRAMES.format(where=f"{named}={path}: no such path"))
        if named == PUSHT_ZARR_ENV:
            raise ReplayBufferError(
                f"{PUSHT_ZARR_ENV}={path}: no such path; point it at pusht_cchi_v7_replay.zarr, or unset it "
                "to use the shared store or, without one, the low-dim demos embedded in the package"
            )
    return path


def open_pusht(source: str, keys: list[str]) -> ReplayBuffer:
    """The PushT arrays ``keys`` from a :func:`resolve_pusht_source` result: the zarr store at that path,
    or the embedded low-dim copy (the same arrays) for :data:`EMBEDDED`."""
    return open_embedded_pusht(keys) if source == EMBEDDED else ReplayBuffer.open(source, keys=keys)


def describe_source(source: dict[str, str]) -> str:
    """One word for the run log: the zarr path, or ``embedded:sha256=<hex>``."""
    if source.get("source") == EMBEDDED:
        return f"{EMBEDDED}:sha256={source['sha256']}"
    return str(source.get("path"))


class PushTLowdimDataset(LowdimWindowDataset):
    """Windows of (obs, action) from the PushT demos (actions in pixels), split train/val by episode.

    ``mirror=True`` appends every demo's reflection about the goal T's axis (:mod:`~immiscible_policy.data.
    pusht_mirror`, ``task.mirror``) before the windows and the normaliser are built; a demo and its
    reflection share their split, and ``max_train_episodes`` counts demos (each brings its reflection).
    """

    #: the obs types this class builds, with their obs_dim (``"image"`` is :class:`PushTImageDataset`'s)
    obs_types = OBS_TYPES
    #: whether the frames are read (then the embedded low-dim copy cannot stand in for the zarr)
    needs_frames = False

    def __init__(
        self,
        zarr_path: str | os.PathLike | None = None,
        obs_type: str = "keypoints",
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        val_ratio: float = 0.02,
        seed: int = 42,
        max_train_episodes: int | None = None,
        mirror: bool = False,
    ):
        _check_obs_type(obs_type, self.obs_types)
        if mirror and obs_type not in OBS_TYPES:
            raise ValueError(
                f"mirror=True: obs_type {obs_type!r} has no mirror; mirroring is defined for PushT "
                f"{'/'.join(OBS_TYPES)} demos: use obs_type keypoints or state, or mirror=False"
            )
        #: the zarr path, or :data:`EMBEDDED` (``zarr_path`` None: :func:`resolve_pusht_source`'s lookup)
        self.source = resolve_pusht_source(zarr_path, frames=self.needs_frames)
        self.zarr_path = None if self.source == EMBEDDED else self.source
        self.obs_type = obs_type
        self.mirror = bool(mirror)
        keys = ["state", "action"] + (["keypoint"] if obs_type == "keypoints" else [])
        self.buffer = buf = open_pusht(self.source, keys)
        self._init_windows(
            *self._arrays(buf, obs_type),
            horizon=horizon,
            n_obs_steps=n_obs_steps,
            n_action_steps=n_action_steps,
            val_ratio=val_ratio,
            seed=seed,
            max_train_episodes=max_train_episodes,
            n_copies=2 if self.mirror else 1,
        )

    @property
    def data_source(self) -> dict[str, str]:
        """What the run records (``config.json``'s ``data_source``): ``{"source": "zarr", "path"}`` or
        ``{"source": "embedded", "file", "sha256"}`` (the sha256 of the file as read, so a changed copy shows)."""
        if self.zarr_path is None:
            return {"source": EMBEDDED, "file": EMBEDDED_PUSHT.name, "sha256": embedded_sha256()}
        return {"source": "zarr", "path": os.path.abspath(self.zarr_path)}

    def _arrays(self, buf: ReplayBuffer, obs_type: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(obs, float32 action, episode_ends) of the store, followed by their reflections when mirrored."""
        if not self.mirror:
            return self._observations(buf, obs_type), np.asarray(buf["action"], np.float32), buf.episode_ends
        keypoint = buf["keypoint"] if obs_type == "keypoints" else None
        demos = mirror_demos(buf["state"], buf["action"], buf.episode_ends, keypoint)
        return (
            pusht_obs(demos.state, demos.keypoint, obs_type),
            demos.action.astype(np.float32),
            demos.episode_ends,
        )

    def _observations(self, buf: ReplayBuffer, obs_type: str) -> np.ndarray:
        """(T, obs_dim) float32 observations from the store (:func:`pusht_obs`)."""
        return pusht_obs(buf["state"], buf["keypoint"] if obs_type == "keypoints" else None, obs_type)

    def _episodes_text(self) -> str:
        """``202`` or, mirrored, ``404 (202 + 202 mirrored)``."""
        n = len(self.episodes)
        return f"{n} ({n // 2} + {n // 2} mirrored)" if self.mirror else str(n)

    def __repr__(self) -> str:
        return (
            f"PushTLowdimDataset(obs_type={self.obs_type!r}, episodes={self._episodes_text()}, "
            f"windows={len(self)}, horizon={self.horizon})"
        )


class PushTImageDataset(PushTLowdimDataset):
    """PushT windows with image observations: the agent xy as ``obs`` plus the recorded 96x96 RGB frames.

    Why frames apart from ``obs``: a window's frames would be 27k numbers per step; they stay uint8 in one
    (M, 3, H, W) array (the train and validation episodes only: the whole store is 0.7 GB as uint8, 2.8 GB
    as the zarr's float32) and a window refers to its first ``n_obs_steps`` frames by row. The encoder
    normalises them on the fly. Windowing, split and normaliser (fitted on the agent xy and the actions)
    are the low-dim dataset's.

    ``dataset[i]`` adds ``"image"``: uint8 tensor (n_obs_steps, 3, H, W); :meth:`all_windows` adds
    ``"image_rows"`` (N, n_obs_steps) int64 rows into :attr:`images`.
    """

    obs_types = {"image": 2}  # the low-dim part: the agent xy
    needs_frames = True

    def __init__(self, zarr_path: str | os.PathLike | None = None, image_size: int = 96, **kw) -> None:
        kw.setdefault("obs_type", "image")
        super().__init__(zarr_path, **kw)
        self.images, self.image_row = self._load_frames(self.train_mask | self.val_mask, int(image_size))

    def _observations(self, buf: ReplayBuffer, obs_type: str) -> np.ndarray:
        return np.asarray(buf["state"][:, :2], dtype=np.float32)  # agent xy (T, 2)

    def _load_frames(self, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(M, 3, H, W) uint8 frames of the episodes in ``mask`` and (n_steps,) buffer row -> frame row
        (-1 for steps of episodes not loaded), read one episode at a time (never the whole float store)."""
        lazy = ReplayBuffer.open(self.zarr_path, keys=["img"], lazy=True)
        shape = tuple(lazy["img"].shape[1:])
        if shape != (size, size, 3):
            raise ValueError(
                f"{self.zarr_path}: data/img frames are {shape}, but task.image_size={size} needs "
                f"({size}, {size}, 3); set task.image_size={shape[0]}"
            )
        episodes = np.nonzero(mask)[0]
        lengths = [lazy.episode_slice(int(e)).stop - lazy.episode_slice(int(e)).start for e in episodes]
        images = np.empty((int(sum(lengths)), 3, size, size), dtype=np.uint8)
        image_row = np.full(lazy.n_steps, -1, dtype=np.int64)
        at = 0
        for e, n in zip(episodes, lengths):
            frames = lazy.get_episode(int(e), ["img"])["img"]  # (n, H, W, 3) float 0..255
            images[at : at + n] = np.clip(np.rint(frames), 0, 255).astype(np.uint8).transpose(0, 3, 1, 2)
            sl = lazy.episode_slice(int(e))
            image_row[sl.start : sl.stop] = np.arange(at, at + n)
            at += n
        return images, image_row

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(idx)
        rows = self.image_row[self.sampler.indices[idx, : self.n_obs_steps]]
        return {**item, "image": torch.from_numpy(self.images[rows])}

    def all_windows(self) -> dict[str, torch.Tensor]:
        """The low-dim windows plus ``"image_rows"`` (N, n_obs_steps): each window's frames in :attr:`images`."""
        rows = self.image_row[self.sampler.indices[:, : self.n_obs_steps]]
        return {**super().all_windows(), "image_rows": torch.from_numpy(rows)}

    def __repr__(self) -> str:
        return (
            f"PushTImageDataset(episodes={len(self.episodes)}, windows={len(self)}, "
            f"frames={len(self.images)}, horizon={self.horizon})"
        )
