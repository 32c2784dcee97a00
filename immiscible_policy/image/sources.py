"""Readers for image sources that are not idx files: CIFAR-10 pickles, sklearn digits, image folders.

Each returns uint8 images (N, C, H, W), labels (N,) long (or None) and class names. Errors are one line
naming the path and the fix.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


# ----------------------------------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10 batches (dicts of bytes, lists and numpy arrays) and nothing else.

    Why: a pickle can run arbitrary code; a user-given path should only ever yield arrays, so every global
    other than numpy's array reconstruction is refused.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:
        raise ValueError(f"{where} is not a CIFAR-10 python batch: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{where} is not a CIFAR-10 python batch (got {type(obj).__name__}).")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_members(path: Path, names: list[str]) -> dict[str, bytes]:
    """The raw bytes of ``cifar-10-batches-py/<name>`` from a tarball or a folder (itself or its parent)."""
    if path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = [n for n in names if n not in members]
                if missing:
                    raise ValueError(
                        f"{path} lacks {', '.join(missing)}; expected the CIFAR-10 python tarball "
                        "(cifar-10-python.tar.gz)."
                    )
                return {n: tar.extractfile(members[n]).read() for n in names}
        except tarfile.TarError as err:
            raise ValueError(
                f"{path} is not a readable tarball ({err}); give cifar-10-python.tar.gz."
            ) from err
    folder = path / CIFAR_DIR if (path / CIFAR_DIR).is_dir() else path
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)}; give cifar-10-python.tar.gz or its extracted "
            f"{CIFAR_DIR} folder."
        )
    return {n: (folder / n).read_bytes() for n in names}


def read_cifar10(path: str | os.PathLike, split: str = "train") -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """CIFAR-10 (50000 train / 10000 test, 3x32x32, 10 classes) from the python tarball or its folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"CIFAR-10 path {path} does not exist; download cifar-10-python.tar.gz from "
            "https://www.cs.toronto.edu/~kriz/cifar.html and set task.path to it."
        )
    if split not in CIFAR_SPLITS:
        raise ValueError(f"CIFAR-10 split {split!r} does not exist; use train or test.")
    raw = _cifar_members(path, [*CIFAR_SPLITS[split], "batches.meta"])
    images, labels = [], []
    for name in CIFAR_SPLITS[split]:
        batch = _unpickle(raw[name], f"{path}:{name}")
        data = np.asarray(batch["data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch["labels"], dtype=np.int64))
    meta = _unpickle(raw["batches.meta"], f"{path}:batches.meta")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("label_names", []))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)), names


# ----------------------------------------------------------------------------------------------- digits


def read_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1797 8x8 digits (values 0..16) as uint8 (N, 1, 8, 8) in 0..255, labels 0..9.

    Read from sklearn's own data file (no sklearn import: it costs seconds).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "task.dataset=digits needs scikit-learn's data file; `pip install scikit-learn`."
        )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall scikit-learn (`pip install scikit-learn`).")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    pixels = np.round(table[:, :64] * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    return torch.from_numpy(pixels), torch.from_numpy(table[:, 64].astype(np.int64))


# ----------------------------------------------------------------------------------------------- folders


def read_folder(
    path: str | os.PathLike,
    *,
    image_size: int | None,
    channels: int = 3,
    labels_from_subfolders: bool = False,
    max_images: int | None = None,
    size_option: str = "task.image_size",
) -> tuple[Tensor, Tensor | None, tuple[str, ...]]:
    """Every PNG/JPEG under ``path`` (recursive, sorted) -> uint8 (N, channels, S, S).

    With ``image_size`` each image's shorter side is resized to it (bicubic) and center-cropped; without
    it all images must already share one size. ``labels_from_subfolders`` labels each image by its
    first-level subfolder name (sorted names -> 0..K-1). ``size_option`` is how the caller's user sets
    ``image_size`` (the mixed-size error names it: ``task.image_size`` in training, ``--image-size N``
    in ``immiscible-fid``).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist; set task.path to a folder of PNG/JPEG files."
        )
    if channels not in (1, 3):
        raise ValueError(f"task.channels={channels} is not supported; use 1 (grey) or 3 (RGB).")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"image folder {root} has no .png/.jpg/.jpeg files (searched recursively).")
    files = files[:max_images]
    arrays, sizes = [], set()
    for file in files:
        try:
            with Image.open(file) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                if image_size is not None:
                    im = _resize_center_crop(im, int(image_size))
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read image {file}: {err}; remove or fix it.") from err
        sizes.add(arr.shape[:2])
        if len(sizes) > 1:
            raise ValueError(
                f"images under {root} have mixed sizes ({sorted(sizes)}, e.g. {file}); set {size_option} "
                "to resize and center-crop them."
            )
        arrays.append(arr.reshape(*arr.shape[:2], -1).transpose(2, 0, 1))
    images = torch.from_numpy(np.stack(arrays))
    if not labels_from_subfolders:
        return images, None, ()
    groups = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else "" for f in files]
    names = tuple(sorted(set(groups)))
    labels = torch.tensor([names.index(g) for g in groups], dtype=torch.long)
    return images, labels, names


def _resize_center_crop(im, size: int):
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))
