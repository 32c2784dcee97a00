"""A replay buffer over diffusion_policy's zarr v2 layout, read and written with zarr 3.

Why: the published demonstration stores (PushT, robomimic conversions) use the layout

    <root>/data/<key>          (n_steps, ...)   one array per modality, concatenated over episodes
    <root>/meta/episode_ends   (n_episodes,)    exclusive end index of each episode (int64)

and diffusion_policy's own loader is broken on zarr 3. This module reads that layout either into memory
(numpy, fast random access for tiny low-dim data) or lazily (zarr arrays, for images), validates it, and
writes new stores in the same layout with ``zarr_format=2`` so the original tooling can read them back.

Every failure is a :class:`ReplayBufferError` with a one-line message naming the path/key and what would be
right; zarr/numcodecs exceptions never escape.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReplayBuffer", "ReplayBufferError"]

# Target size of one chunk along time when writing (bytes); diffusion_policy used ~per-episode chunks.
_CHUNK_BYTES = 4 * 2**20


class ReplayBufferError(ValueError):
    """Bad or unreadable replay-buffer store (one-line, actionable message)."""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200]


def _check_finite(key: str, values: np.ndarray, where: str, offset: int = 0) -> None:
    """Raise if a float array holds NaN/Inf, naming the key and the first bad (time) index."""
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return
    finite = np.isfinite(values)
    if finite.all():
        return
    bad_rows = ~finite.reshape(len(values), -1).all(axis=1)
    first = int(np.argmax(bad_rows)) + offset
    raise ReplayBufferError(
        f"{where}: data/{key} has NaN/Inf values (first at index {first}); "
        "clean or drop those steps before storing/loading"
    )


def _check_episode_ends(episode_ends: np.ndarray, n_steps: int, where: str) -> np.ndarray:
    ends = np.asarray(episode_ends)
    if ends.ndim != 1:
        raise ReplayBufferError(f"{where}: episode_ends must be 1-D, got shape {ends.shape}")
    if ends.size and not np.issubdtype(ends.dtype, np.integer) and not np.all(ends == np.round(ends)):
        raise ReplayBufferError(f"{where}: episode_ends must be integers, got dtype {ends.dtype}")
    ends = ends.astype(np.int64)
    if ends.size and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
        bad = 0 if ends[0] <= 0 else int(np.argmax(np.diff(ends) <= 0)) + 1
        raise ReplayBufferError(
            f"{where}: episode_ends must be strictly increasing and > 0 (exclusive end of each episode); "
            f"violated at position {bad} (value {int(ends[bad])}, previous "
            f"{int(ends[bad - 1]) if bad else 0})"
        )
    last = int(ends[-1]) if ends.size else 0
    if last != n_steps:
        raise ReplayBufferError(
            f"{where}: episode_ends[-1] = {last} does not match the data length {n_steps}; "
            "the last episode must end exactly at the number of stored steps"
        )
    return ends


def _check_lengths(lengths: Mapping[str, int], where: str) -> int:
    if not lengths:
        raise ReplayBufferError(f"{where}: no data arrays; expected at least one array under data/")
    unique = set(lengths.values())
    if len(unique) != 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ReplayBufferError(
            f"{where}: data arrays have different lengths ({desc}); every data/<key> must have one row per step"
        )
    return unique.pop()


class ReplayBuffer:
    """Episodes of per-step arrays, concatenated along time.

    Attributes:
        episode_ends: (n_episodes,) int64, exclusive end index of each episode.
        data: key -> (n_steps, ...) numpy array (in memory) or zarr array (lazy).
    """

    def __init__(self, data: Mapping[str, Any], episode_ends: np.ndarray, path: str | None = None):
        where = path or "<in-memory replay buffer>"
        n_steps = _check_lengths({k: int(v.shape[0]) for k, v in data.items()}, where)
        self.episode_ends = _check_episode_ends(episode_ends, n_steps, where)
        self.data = dict(data)
        self.path = path

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(
        cls, path: str | os.PathLike, keys: Iterable[str] | None = None, lazy: bool = False
    ) -> ReplayBuffer:
        """Open a store. ``keys=None`` takes every ``data/<key>``; ``lazy=True`` keeps zarr arrays.

        In-memory mode checks float arrays for NaN/Inf on load; lazy mode checks each episode when it is
        read with :meth:`get_episode` (reading everything up front would defeat laziness).
        """
        import zarr

        p = Path(path)
        where = str(p)
        if not p.exists():
            raise ReplayBufferError(
                f"{where}: no such path; expected a zarr store directory with data/ and meta/episode_ends"
            )
        try:
            root = zarr.open_group(str(p), mode="r")
        except Exception:
            raise ReplayBufferError(
                f"{where}: not a zarr group; expected a zarr (v2 or v3) group with data/<key> and "
                "meta/episode_ends"
            ) from None
        try:
            members = set(root.group_keys())
            if "data" not in members or "meta" not in members:
                raise ReplayBufferError(
                    f"{where}: zarr group lacks {'data/' if 'data' not in members else 'meta/'}; expected "
                    f"data/<key> arrays and meta/episode_ends (groups found: {sorted(members) or 'none'})"
                )
            data_group = root["data"]
            available = sorted(data_group.array_keys())
            meta_keys = set(root["meta"].array_keys())
            if "episode_ends" not in meta_keys:
                raise ReplayBufferError(
                    f"{where}: missing meta/episode_ends (meta has {sorted(meta_keys) or 'nothing'}); "
                    "it must hold the exclusive end index of each episode"
                )
            episode_ends = np.asarray(root["meta/episode_ends"][:])
            wanted = available if keys is None else list(keys)
            missing = [k for k in wanted if k not in available]
            if missing:
                raise ReplayBufferError(f"{where}: missing data key(s) {missing}; available: {available}")
            arrays: dict[str, Any] = {}
            for key in wanted:
                arr = data_group[key]
                if lazy:
                    arrays[key] = arr
                else:
                    values = np.asarray(arr[:])
                    _check_finite(key, values, where)
                    arrays[key] = values
        except ReplayBufferError:
            raise
        except Exception as exc:  # zarr / numcodecs / IO failures: one line, no traceback
            raise ReplayBufferError(f"{where}: failed to read store ({_short(exc)})") from None
        return cls(arrays, episode_ends, path=where)

    # ------------------------------------------------------------------ writing
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        data: Mapping[str, np.ndarray],
        episode_ends: np.ndarray | Iterable[int],
        overwrite: bool = False,
    ) -> ReplayBuffer:
        """Write ``data`` (key -> (n_steps, ...)) and ``episode_ends`` as a zarr v2 store; return it opened.

        Validation (lengths, episode_ends, NaN/Inf) happens before anything touches the disk.
        """
        import zarr

        where = str(path)
        arrays = {k: np.asarray(v) for k, v in data.items()}
        n_steps = _check_lengths({k: int(v.shape[0]) if v.ndim else 0 for k, v in arrays.items()}, where)
        ends = _check_episode_ends(
            np.asarray(list(episode_ends) if not hasattr(episode_ends, "shape") else episode_ends),
            n_steps,
            where,
        )
        for key, values in arrays.items():
            if values.ndim == 0:
                raise ReplayBufferError(f"{where}: data/{key} is a scalar; expected shape (n_steps, ...)")
            _check_finite(key, values, where)
        if Path(path).exists() and not overwrite:
            raise ReplayBufferError(f"{where}: already exists; pass overwrite=True to replace it")
        try:
            root = zarr.open_group(str(path), mode="w", zarr_format=2)
            for key, values in arrays.items():
                row_bytes = max(1, values[0].nbytes if len(values) else 1)
                rows = int(min(max(1, len(values)), max(1, _CHUNK_BYTES // row_bytes)))
                arr = root.create_array(
                    f"data/{key}", shape=values.shape, dtype=values.dtype, chunks=(rows, *values.shape[1:])
                )
                arr[...] = values
            meta = root.create_array(
                "meta/episode_ends", shape=ends.shape, dtype=np.int64, chunks=(max(1, len(ends)),)
            )
            meta[...] = ends
        except Exception as exc:
            raise ReplayBufferError(f"{where}: failed to write store ({_short(exc)})") from None
        return cls.open(path)

    # ------------------------------------------------------------------ access
    def keys(self) -> list[str]:
        return list(self.data.keys())

    def __getitem__(self, key: str):
        try:
            return self.data[key]
        except KeyError:
            raise ReplayBufferError(
                f"{self.path or '<replay buffer>'}: unknown key {key!r}; available: {sorted(self.data)}"
            ) from None

    def __contains__(self, key: str) -> bool:
        return key in self.data

    @property
    def n_episodes(self) -> int:
        return int(len(self.episode_ends))

    @property
    def n_steps(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        """(n_episodes,) int64 number of steps per episode."""
        return np.diff(self.episode_ends, prepend=0)

    def episode_slice(self, i: int) -> slice:
        """Time slice of episode ``i`` (negative indices allowed)."""
        n = self.n_episodes
        if not -n <= i < n:
            raise ReplayBufferError(f"episode index {i} out of range; the buffer has {n} episodes")
        i %= n
        start = int(self.episode_ends[i - 1]) if i > 0 else 0
        return slice(start, int(self.episode_ends[i]))

    def get_episode(self, i: int, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as key -> (episode_len, ...) numpy arrays."""
        sl = self.episode_slice(i)
        out = {}
        for key in self.keys() if keys is None else keys:
            values = np.asarray(self[key][sl])
            if not isinstance(self.data[key], np.ndarray):  # lazy: check what we read
                _check_finite(key, values, self.path or "<replay buffer>", offset=sl.start)
            out[key] = values
        return out

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self.data.items())
        return f"ReplayBuffer({self.path!r}, n_episodes={self.n_episodes}, n_steps={self.n_steps}, {shapes})"
