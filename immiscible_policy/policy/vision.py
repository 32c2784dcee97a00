"""Vision encoder of image-observation policies: ResNet-18 with GroupNorm and a spatial-softmax head.

Why this design (diffusion_policy's CNN image policy, also LeRobot's PushT reproduction):

* GroupNorm instead of BatchNorm: the policy's EMA copy and small per-rank batches make BatchNorm's
  running statistics unreliable, and GroupNorm makes a sample's features independent of its batch (so an
  emulated rank computes exactly what a real one does);
* a spatial softmax (soft keypoints: the expected (x, y) of each of ``num_keypoints`` feature maps) keeps
  *where* things are, which global average pooling throws away, and PushT is all about positions;
* random crops (84 of 96) in training, the centre crop in evaluation: the cheap augmentation that matters
  most for pixel policies.

torchvision does not import beside this project's torch, so the network is written here (trained from
scratch, as diffusion_policy's PushT image config does). Images arrive as uint8 (B, 3, H, W) and are
normalised on the fly to [-1, 1]; one encoder is shared over every observation step (the caller folds
the steps into the batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ImageEncoder",
    "ResNetGN",
    "SpatialSoftmax",
    "centre_offsets",
    "crop_images",
    "random_offsets",
]


def _groups(channels: int, group_size: int) -> int:
    """GroupNorm groups for ``channels``: ``channels // group_size`` (diffusion_policy: 16), at least 1."""
    groups = max(1, channels // group_size)
    while channels % groups:
        groups -= 1
    return groups


class BasicBlock(nn.Module):
    """ResNet's two-3x3-conv residual block, GroupNorm for BatchNorm. (B, C_in, H, W) -> (B, C_out, H/s, W/s)."""

    def __init__(self, c_in: int, c_out: int, stride: int, group_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(c_out, group_size), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(c_out, group_size), c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.GroupNorm(_groups(c_out, group_size), c_out),
            )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class ResNetGN(nn.Module):
    """ResNet trunk (no pooling head): 7x7/2 stem + 3x3/2 max-pool, then one stage per entry of
    ``channels`` with ``blocks[i]`` basic blocks (stride 2 from the second stage on).

    ``channels=(64, 128, 256, 512), blocks=(2, 2, 2, 2)`` is ResNet-18 (11.2M parameters in the trunk);
    an 84x84 crop gives (B, 512, 3, 3).
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        group_size: int = 16,
    ) -> None:
        super().__init__()
        channels, blocks = [int(c) for c in channels], [int(b) for b in blocks]
        if len(channels) != len(blocks) or not channels:
            raise ValueError(
                f"model.vision.channels {channels} and model.vision.blocks {blocks} must be non-empty and "
                "of the same length (one entry per ResNet stage)."
            )
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels[0], 7, stride=2, padding=3, bias=False),
            nn.GroupNorm(_groups(channels[0], group_size), channels[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        layers, c_in = [], channels[0]
        for i, (c, n) in enumerate(zip(channels, blocks)):
            for j in range(n):
                layers.append(
                    BasicBlock(c_in, c, stride=2 if (i > 0 and j == 0) else 1, group_size=group_size)
                )
                c_in = c
        self.stages = nn.Sequential(*layers)
        self.out_channels = c_in
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


class SpatialSoftmax(nn.Module):
    """Soft keypoints: a 1x1 conv to ``num_keypoints`` maps, a softmax over each map's positions, and the
    expected (x, y) in [-1, 1]. (B, C, H, W) -> (B, 2 * num_keypoints), ordered x0, y0, x1, y1, ..."""

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, 1)
        self.num_keypoints = num_keypoints

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        attn = self.keypoints(x).flatten(2).softmax(-1)  # (B, K, H*W)
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=attn.dtype)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        pos = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # (H*W, 2)
        return (attn @ pos).reshape(b, 2 * self.num_keypoints)


# ---------------------------------------------------------------------------------------------- crops


def random_offsets(
    shape: Sequence[int],
    image_hw: Sequence[int],
    crop: int,
    generator: torch.Generator | None = None,
    device=None,
) -> Tensor:
    """Uniform top-left corners (``*shape``, 2) int64 (row, col) of ``crop`` x ``crop`` windows in an image."""
    h, w = int(image_hw[0]), int(image_hw[1])
    _check_crop(crop, h, w)
    rows = torch.randint(0, h - crop + 1, (*shape, 1), generator=generator, device=device)
    cols = torch.randint(0, w - crop + 1, (*shape, 1), generator=generator, device=device)
    return torch.cat([rows, cols], dim=-1)


def centre_offsets(shape: Sequence[int], image_hw: Sequence[int], crop: int, device=None) -> Tensor:
    """The centre crop's top-left corner for every image: (``*shape``, 2) int64."""
    h, w = int(image_hw[0]), int(image_hw[1])
    _check_crop(crop, h, w)
    corner = torch.tensor([(h - crop) // 2, (w - crop) // 2], dtype=torch.int64, device=device)
    return corner.expand(*shape, 2).clone()


def _check_crop(crop: int, h: int, w: int) -> None:
    if not 1 <= crop <= min(h, w):
        raise ValueError(f"model.vision.crop={crop} must be between 1 and the image size {min(h, w)}.")


def crop_images(images: Tensor, offsets: Tensor, crop: int) -> Tensor:
    """Per-image crops: images (B, C, H, W), offsets (B, 2) (row, col) -> (B, C, crop, crop), one gather."""
    b = images.shape[0]
    if offsets.shape != (b, 2):
        raise ValueError(f"crop offsets must be ({b}, 2), got {tuple(offsets.shape)}")
    ar = torch.arange(crop, device=images.device)
    rows = (offsets[:, 0:1].to(images.device) + ar)[:, :, None]  # (B, crop, 1)
    cols = (offsets[:, 1:2].to(images.device) + ar)[:, None, :]  # (B, 1, crop)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


# -------------------------------------------------------------------------------------------- encoder


class ImageEncoder(nn.Module):
    """uint8 frames (B, 3, H, W) -> features (B, feature_dim): crop, scale to [-1, 1], ResNet-GN, spatial
    softmax, linear.

    Crops: ``offsets`` (B, 2) give each crop's top-left corner (the policy draws them from its seeded
    training generator, so runs repeat and resume exactly); without them a module in training mode draws
    random crops (``generator``, else torch's global RNG) and one in eval mode takes the centre crop.
    """

    def __init__(
        self,
        channels: Sequence[int] = (64, 128, 256, 512),
        blocks: Sequence[int] = (2, 2, 2, 2),
        group_size: int = 16,
        num_keypoints: int = 32,
        feature_dim: int = 64,
        crop: int = 84,
    ) -> None:
        super().__init__()
        self.trunk = ResNetGN(channels, blocks, group_size)
        self.pool = SpatialSoftmax(self.trunk.out_channels, int(num_keypoints))
        self.head = nn.Linear(2 * int(num_keypoints), int(feature_dim))
        self.crop, self.feature_dim = int(crop), int(feature_dim)

    def offsets(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Random corners in training mode, the centre in eval mode: (B, 2)."""
        hw, n = images.shape[-2:], (images.shape[0],)
        if self.training:
            return random_offsets(n, hw, self.crop, generator=generator, device=images.device)
        return centre_offsets(n, hw, self.crop, device=images.device)

    def forward(
        self, images: Tensor, offsets: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) uint8, got shape {tuple(images.shape)}")
        if offsets is None:
            offsets = self.offsets(images, generator)
        x = crop_images(images, offsets, self.crop)
        x = x.float() * (2.0 / 255.0) - 1.0  # uint8 [0, 255] -> [-1, 1], on the fly
        return self.head(self.pool(self.trunk(x)))
