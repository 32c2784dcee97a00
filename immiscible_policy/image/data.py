"""Image datasets held in memory as uint8 (N, C, H, W), served as float tensors in [-1, 1] (C, H, W).

Why in memory and uint8: the sets here (Fashion-MNIST, CIFAR-10, sklearn digits, small folders) are at most
a few hundred MB as bytes, so the trainer indexes whole batches from one tensor (no DataLoader workers to
fight the sampler for two CPU cores), and the FID reference is exactly the images training sees.

Sources (see :func:`load_dataset`):
* ``fashion_mnist``: the idx gz files of the Debian package ``dataset-fashion-mnist`` (28x28 grey), padded
  (2 black pixels a side) or resized to ``image_size``;
* ``cifar10``: the python tarball ``cifar-10-python.tar.gz`` or its extracted folder (32x32 RGB);
* ``digits``: scikit-learn's 8x8 digits (values 0..16), read from sklearn's data file, for tests;
* ``image_folder``: PNG/JPEG files under a folder (recursive), resized (shorter side) + center-cropped.
Every failure is one line naming the path and the fix.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from immiscible_policy.image.sources import read_cifar10, read_digits, read_folder

FASHION_MNIST_ENV = "IMMISCIBLE_FASHION_MNIST"
FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DATASETS = ("fashion_mnist", "cifar10", "digits", "image_folder")
RESIZE_MODES = ("pad", "resize")


def to_unit(images_u8: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (same shape)."""
    return images_u8.float().div(127.5).sub(1.0)


def to_uint8(images: Tensor) -> Tensor:
    """float [-1, 1] -> uint8 [0, 255] (clamped, rounded; same shape)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """In-memory images. ``images`` (N, C, H, W) uint8; ``labels`` (N,) long or None.

    ``ds[i]`` is ``(image, label)`` with image float (C, H, W) in [-1, 1] (label -1 when unlabelled);
    :meth:`all_images` is the fast path the trainer uses. ``ref_key`` names the exact preprocessing
    (dataset, split, size, mode, subset) so cached FID reference statistics are never mixed up.
    """

    images: Tensor
    labels: Tensor | None
    ref_key: str
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        label = -1 if self.labels is None else int(self.labels[i])
        return to_unit(self.images[i]), label

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when unlabelled)."""
        if self.labels is None:
            return 0
        return max(len(self.class_names), int(self.labels.max()) + 1) if len(self.labels) else 0

    def all_images(self) -> Tensor:
        """(N, C, H, W) float32 in [-1, 1]: the whole set at once."""
        return to_unit(self.images)


# ----------------------------------------------------------------------------------------------- resizing


def fit_size(images_u8: Tensor, size: int | None, mode: str = "resize") -> Tensor:
    """(N, C, h, w) uint8 -> (N, C, size, size) uint8.

    ``pad`` adds black borders (only when the images are square and not larger than ``size``; this is
    the usual 28 -> 32 for MNIST-like sets); ``resize`` scales the shorter side to ``size`` (antialiased
    bilinear) and center-crops.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not supported; use one of {', '.join(RESIZE_MODES)}.")
    n, c, h, w = images_u8.shape
    if size is None or (h == size and w == size):
        return images_u8
    if mode == "pad":
        if h != w or h > size:
            raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}; use resize_mode=resize.")
        lo = (size - h) // 2
        return F.pad(images_u8, (lo, size - h - lo, lo, size - h - lo), value=0)
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    out = []
    for chunk in images_u8.split(4096):
        x = F.interpolate(chunk.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        out.append(x[:, :, top : top + size, left : left + size].round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (gz or raw): magic (0, 0, dtype=0x08 uint8, ndim), big-endian dims, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
            dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = f.read()
    except (OSError, struct.error, EOFError) as err:
        raise ValueError(f"cannot read idx file {path}: {err}") from err
    if zero != 0 or dtype != 0x08 or len(data) != int(np.prod(dims)):
        raise ValueError(f"{path} is not a uint8 idx file (magic {zero:#x}/{dtype:#x}, dims {dims}).")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def default_fashion_mnist_dir() -> Path:
    """``$IMMISCIBLE_FASHION_MNIST`` or the Debian package's folder."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT)


def load_fashion_mnist(
    path: str | os.PathLike | None = None,
    split: str = "train",
    image_size: int | None = 32,
    resize_mode: str = "pad",
    max_images: int | None = None,
) -> ImageDataset:
    """Fashion-MNIST (60000 train / 10000 test, 1x28x28, 10 classes) -> 1 x image_size^2."""
    root = Path(path) if path else default_fashion_mnist_dir()
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Fashion-MNIST split {split!r} does not exist; use train or test.")
    files = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        cands = [root / f"{prefix}-{kind}.gz", root / f"{prefix}-{kind}"]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {cands[0]} not found; install it with `apt-get install "
                f"dataset-fashion-mnist` or set task.path (or ${FASHION_MNIST_ENV}) to the idx folder."
            )
        files.append(found)
    images = torch.from_numpy(_read_idx(files[0]).copy())[:max_images, None]
    labels = torch.from_numpy(_read_idx(files[1]).astype(np.int64))[:max_images]
    images = fit_size(images, image_size, resize_mode)
    key = _key("fashion_mnist", split, images.shape[-1], resize_mode, max_images)
    return ImageDataset(images, labels, key, FASHION_CLASSES)


def _key(name: str, split: str, size: int, mode: str, max_images: int | None) -> str:
    sub = f"-first{max_images}" if max_images else ""
    return f"{name}-{split}-{size}-{mode}{sub}"


# ----------------------------------------------------------------------------------------------- dispatch


def load_dataset(task) -> ImageDataset:
    """The dataset a task config names (``task.dataset`` in :data:`DATASETS`), preprocessed as configured.

    Keys: ``dataset``, ``path``, ``split``, ``image_size``, ``resize_mode``, ``max_images``,
    ``channels`` (image_folder: 1 or 3), ``labels_from_subfolders`` (image_folder).
    """
    name = str(task.dataset)
    size = None if task.get("image_size") is None else int(task.image_size)
    mode = str(task.get("resize_mode") or "resize")
    cap = None if task.get("max_images") is None else int(task.max_images)
    split = str(task.get("split") or "train")
    path = task.get("path")
    if name == "fashion_mnist":
        return load_fashion_mnist(path, split, size, mode, cap)
    if name == "cifar10":
        if not path:
            raise ValueError(
                "task.path is required for cifar10: the cifar-10-python.tar.gz file or its folder."
            )
        images, labels, classes = read_cifar10(path, split)
        images, labels = fit_size(images[:cap], size, mode), labels[:cap]
        return ImageDataset(images, labels, _key("cifar10", split, images.shape[-1], mode, cap), classes)
    if name == "digits":
        images, labels = read_digits()
        images, labels = fit_size(images[:cap], size, mode), labels[:cap]
        return ImageDataset(images, labels, _key("digits", "all", images.shape[-1], mode, cap), ())
    if name == "image_folder":
        if not path:
            raise ValueError("task.path is required for image_folder: a folder of PNG/JPEG images.")
        images, labels, classes = read_folder(
            path,
            image_size=size,
            channels=int(task.get("channels") or 3),
            labels_from_subfolders=bool(task.get("labels_from_subfolders", False)),
            max_images=cap,
        )
        folder = Path(path).resolve().name
        return ImageDataset(
            images, labels, _key(f"folder_{folder}", "all", images.shape[-1], mode, cap), classes
        )
    raise ValueError(f"task.dataset={name!r} is not supported; use one of {', '.join(DATASETS)}.")
