"""A replay buffer over diffusion_policy's zarr v2 layout, read and written with zarr 3.

Why: the published demonstration stores (PushT, robomimic conversions) use the layout

    <root>/data/<key>          (n_steps, ...)   one array per modality, concatenated over episodes
    <root>/meta/episode_ends   (n_episodes,)    exclusive end index of each episode (int64)

and diffusion_policy's own loader is broken on zarr 3. This module reads that layout either into memory
(numpy, fast random access for tiny low-dim data) or lazily (zarr arrays, for images), validates it, and
writes new stores in the same layout with ``zarr_format=2`` so the original tooling can read them back.

Every failure is a :class:`ReplayBufferError` with a one-line message naming the path/key and what would be
right; zarr/numcodecs exceptions never escape. A store with chunk files missing is refused at open (zarr
would silently read them as the fill value), and a chunk that fails to decode leaves no zarr reads pending
(so nothing but the error line is printed at exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReplayBuffer", "ReplayBufferError"]

# Target size of one chunk along time when writing (bytes); diffusion_policy used ~per-episode chunks.
_CHUNK_BYTES = 4 * 2**20


class ReplayBufferError(ValueError):
    """Bad or unreadable replay-buffer store (one-line, actionable message)."""


# numcodecs >= 0.16.4 warns at import when the deprecated ``crc32c`` package is installed, and installs its
# own "once" filter for it in front of any filter of ours; so the import is wrapped and exactly that warning
# is dropped (everything else caught while importing is shown as usual).
_CRC32C_WARNING = "crc32c usage is deprecated"


def _import_zarr():
    """``zarr``, imported (the first time) without numcodecs' crc32c DeprecationWarning."""
    if "zarr" in sys.modules:
        return sys.modules["zarr"]
    with warnings.catch_warnings(record=True) as caught:
        import zarr
    for w in caught:
        if issubclass(w.category, DeprecationWarning) and str(w.message).startswith(_CRC32C_WARNING):
            continue
        warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    return zarr


def _settle_zarr() -> None:
    """Wait for zarr's outstanding reads after a failed one.

    zarr 3 reads chunks concurrently on a background event loop; when one chunk fails, the read raises at
    once while its sibling tasks keep running, and at interpreter exit zarr stops the loop under them:
    hundreds of lines of "Task was destroyed but it is pending" / "cannot schedule new futures after
    shutdown". Awaiting them here (their results and errors discarded) leaves nothing pending.
    """
    try:
        from zarr.core.sync import sync
    except ImportError:  # pragma: no cover - another zarr layout: nothing to settle
        return

    async def drain() -> None:
        me = asyncio.current_task()
        for _ in range(100):  # tasks may spawn tasks; bounded, never a hang
            pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if not pending:
                return
            await asyncio.gather(*pending, return_exceptions=True)

    with contextlib.suppress(Exception):  # settling is best effort; the caller reports the real error
        sync(drain())


def _chunk_grid(arr) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(chunk shape, chunks per dimension) of the stored representation (shards for sharded v3 arrays)."""
    md = arr.metadata
    chunk_shape = tuple(md.chunks) if md.zarr_format == 2 else tuple(md.chunk_grid.chunk_shape)
    grid = tuple(-(-int(n) // max(1, int(c))) for n, c in zip(md.shape, chunk_shape))
    return chunk_shape, grid


def _rows_of(coords: tuple[int, ...], chunk_shape: tuple[int, ...], n_rows: int) -> str:
    if not coords:
        return "the whole array"
    start = coords[0] * chunk_shape[0]
    return f"rows {start}-{min(start + chunk_shape[0], n_rows) - 1}"


def _check_chunks(root: Path, arr, label: str, where: str) -> None:
    """Refuse an array whose chunk files are not all in the store (compares the directory listing with the
    chunk grid; no chunk is read). zarr reads an absent chunk as the fill value, without any error."""
    array_dir = root / arr.path
    if not array_dir.is_dir():  # not a plain directory store: nothing to list
        return
    present = set()
    for dirpath, _dirs, files in os.walk(array_dir):
        rel = os.path.relpath(dirpath, array_dir)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        present.update(prefix + f for f in files)
    chunk_shape, grid = _chunk_grid(arr)
    encode = arr.metadata.encode_chunk_key
    missing = [c for c in itertools.product(*(range(g) for g in grid)) if encode(c) not in present]
    if not missing:
        return
    total = int(np.prod(grid)) if grid else 1
    n_rows = int(arr.shape[0]) if arr.shape else 0
    shown = ", ".join(f"{encode(c)} ({_rows_of(c, chunk_shape, n_rows)})" for c in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    raise ReplayBufferError(
        f"{where}: store is incomplete or corrupt: {label} is missing {len(missing)} of {total} chunk "
        f"file(s): {shown}{more}; zarr would silently read them as fill value {arr.metadata.fill_value}. "
        "Re-copy or re-download the store (or rewrite it with every chunk)"
    )


def _read(arr, sl: slice, label: str, where: str) -> np.ndarray:
    """``arr[sl]`` as numpy; a chunk that cannot be read or decoded becomes one line naming its rows."""
    try:
        return np.asarray(arr[sl])
    except Exception as exc:
        _settle_zarr()
        raise ReplayBufferError(_unreadable(arr, sl, label, where, exc)) from None


def _unreadable(arr, sl: slice, label: str, where: str, exc: BaseException) -> str:
    """Find the first row-block (chunk along time) in ``sl`` that fails, for the message."""
    chunk_shape, grid = _chunk_grid(arr)
    n_rows = int(arr.shape[0]) if arr.shape else 0
    if arr.shape and n_rows:
        start, stop, _ = sl.indices(n_rows)
        step = max(1, chunk_shape[0])
        for first in range(start - start % step, stop, step):
            block = slice(max(first, start), min(first + step, stop))
            try:
                arr[block]
            except Exception as err:
                _settle_zarr()
                coords = (first // step,) + (0,) * (len(grid) - 1)
                key = (
                    f" (chunk {arr.metadata.encode_chunk_key(coords)})"
                    if all(g == 1 for g in grid[1:])
                    else ""
                )
                return (
                    f"{where}: failed to read store: {label} rows {first}-{min(first + step, n_rows) - 1}"
                    f"{key} cannot be read ({_short(err)}); the store is corrupt, re-copy or regenerate it"
                )
    return f"{where}: failed to read store: {label} ({_short(exc)})"


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
        zarr = _import_zarr()

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
            ends_array = root["meta/episode_ends"]
            _check_chunks(p, ends_array, "meta/episode_ends", where)
            episode_ends = _read(ends_array, slice(None), "meta/episode_ends", where)
            wanted = available if keys is None else list(keys)
            missing = [k for k in wanted if k not in available]
            if missing:
                raise ReplayBufferError(f"{where}: missing data key(s) {missing}; available: {available}")
            arrays: dict[str, Any] = {}
            for key in wanted:
                arr = data_group[key]
                _check_chunks(p, arr, f"data/{key}", where)
                if lazy:
                    arrays[key] = arr
                else:
                    values = _read(arr, slice(None), f"data/{key}", where)
                    _check_finite(key, values, where)
                    arrays[key] = values
        except ReplayBufferError:
            raise
        except Exception as exc:  # zarr / numcodecs / IO failures: one line, no traceback
            _settle_zarr()
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
        zarr = _import_zarr()

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
            # zarr 3 skips chunks equal to the fill value by default; write them all, so that a store
            # with a chunk file missing is always recognisable as incomplete (see _check_chunks)
            every_chunk = {"write_empty_chunks": True}
            for key, values in arrays.items():
                row_bytes = max(1, values[0].nbytes if len(values) else 1)
                rows = int(min(max(1, len(values)), max(1, _CHUNK_BYTES // row_bytes)))
                arr = root.create_array(
                    f"data/{key}",
                    shape=values.shape,
                    dtype=values.dtype,
                    chunks=(rows, *values.shape[1:]),
                    config=every_chunk,
                )
                arr[...] = values
            meta = root.create_array(
                "meta/episode_ends",
                shape=ends.shape,
                dtype=np.int64,
                chunks=(max(1, len(ends)),),
                config=every_chunk,
            )
            meta[...] = ends
        except Exception as exc:
            _settle_zarr()
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
        where = self.path or "<replay buffer>"
        for key in self.keys() if keys is None else keys:
            array = self[key]
            if isinstance(array, np.ndarray):
                out[key] = array[sl]
            else:  # lazy: read (one line on a bad chunk) and check what we read
                values = _read(array, sl, f"data/{key}", where)
                _check_finite(key, values, where, offset=sl.start)
                out[key] = values
        return out

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self.data.items())
        return f"ReplayBuffer({self.path!r}, n_episodes={self.n_episodes}, n_steps={self.n_steps}, {shapes})"
