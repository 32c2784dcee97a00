"""The PushT low-dim demos shipped inside the package (``pusht_lowdim.npz``, about 1 MB).

Why ship them: the keypoint/state task reads only ``data/{action,state,keypoint}`` and
``meta/episode_ends`` of Diffusion Policy's ``pusht_cchi_v7_replay.zarr``; the store is 32 MB because
of its 96x96 frames. These arrays alone compress to about 1 MB, so the main job trains on any fresh
machine without a download. They are the zarr's arrays bit for bit (same dtypes and values; provenance,
licence and the check in ``PUSHT_LOWDIM.md``); ``scripts/extract_pusht_lowdim.py`` regenerates the file.

Format: a standard ``.npz`` (``np.load`` reads it) whose entries are named after the zarr paths
(``data/action.npy``, ..., ``meta/episode_ends.npy``), compressed with LZMA (smaller than
``np.savez_compressed``'s deflate) and written with fixed entry timestamps so that regenerating it
gives the same bytes (``np.savez`` stamps the current time into the archive).
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np

from immiscible_policy.data.replay_buffer import ReplayBuffer, ReplayBufferError

__all__ = [
    "DATA_KEYS",
    "EMBEDDED_PUSHT",
    "embedded_sha256",
    "open_embedded_pusht",
    "write_lowdim_npz",
]

#: the file inside the package
EMBEDDED_PUSHT = Path(__file__).with_name("pusht_lowdim.npz")
#: the zarr's ``data/<key>`` arrays it holds (everything but ``img``), in archive order
DATA_KEYS = ("action", "state", "keypoint", "n_contacts")
#: a fixed entry time (the zip format's earliest), so the archive does not depend on when it was written
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_WHERE = "embedded PushT demos"


def write_lowdim_npz(
    data: Mapping[str, np.ndarray], episode_ends: np.ndarray, out: str | os.PathLike
) -> None:
    """Write ``data/<key>`` and ``meta/episode_ends`` as a deterministic LZMA ``.npz`` (same input, same bytes).

    Arrays keep their dtype and values exactly (``.npy`` entries, no pickles); the file is written to a
    temporary name and renamed, so a reader never sees half an archive.
    """
    entries = {f"data/{k}": np.asarray(v) for k, v in data.items()}
    entries["meta/episode_ends"] = np.asarray(episode_ends)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_LZMA) as archive:
        for name, array in entries.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_LZMA
            info.external_attr = 0o644 << 16  # rw-r--r--, whatever the writer's umask
            with archive.open(info, "w") as entry:
                np.lib.format.write_array(entry, np.ascontiguousarray(array), allow_pickle=False)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out)


@lru_cache(maxsize=4)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def embedded_sha256(path: str | os.PathLike = EMBEDDED_PUSHT) -> str:
    """sha256 of the embedded file as it is on disk (what a run records, so a changed copy shows)."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_mtime_ns, stat.st_size)


def open_embedded_pusht(
    keys: Iterable[str] | None = None, path: str | os.PathLike = EMBEDDED_PUSHT
) -> ReplayBuffer:
    """The embedded demos as an in-memory :class:`ReplayBuffer` (``keys=None``: every array it holds).

    The same object ``ReplayBuffer.open`` returns for the zarr, so the datasets, the mirror and the
    normaliser run the same code on either source.
    """
    path = Path(path)
    if not path.is_file():
        raise ReplayBufferError(
            f"{path}: the {_WHERE} are missing from this install; reinstall immiscible-policy, regenerate "
            "the file with scripts/extract_pusht_lowdim.py, or pass task.dataset_path=PATH/pusht_cchi_v7_replay.zarr"
        )
    wanted = list(DATA_KEYS if keys is None else keys)
    frames = [k for k in wanted if k not in DATA_KEYS]
    if frames:
        raise ReplayBufferError(
            f"{_WHERE} hold data/{', data/'.join(DATA_KEYS)} only, not {frames}; the frames (data/img) need "
            "the full pusht_cchi_v7_replay.zarr: pass task.dataset_path=PATH or set IMMISCIBLE_PUSHT_ZARR"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[f"data/{k}"] for k in wanted}
            episode_ends = npz["meta/episode_ends"]
    except Exception as exc:  # a truncated or foreign file: one line naming it
        raise ReplayBufferError(
            f"{path}: cannot read the {_WHERE} ({type(exc).__name__}: {exc}); reinstall immiscible-policy "
            "or regenerate the file with scripts/extract_pusht_lowdim.py"
        ) from None
    return ReplayBuffer(data, episode_ends, path=f"{_WHERE} ({path.name})")
