"""Regenerate immiscible_policy/data/pusht_lowdim.npz from Diffusion Policy's pusht_cchi_v7_replay.zarr.

    python scripts/extract_pusht_lowdim.py [ZARR] [--out FILE] [--check]

ZARR defaults to $IMMISCIBLE_PUSHT_ZARR, else ../shared/data/pusht/pusht_cchi_v7_replay.zarr beside the
project. Copies data/{action,state,keypoint,n_contacts} and meta/episode_ends unchanged (dtypes and
values; the store's chunks are checked complete and its floats finite on the way) and leaves data/img
out. The output is deterministic: the same store gives the same bytes, so ``--check`` (write to a
temporary file and compare it with FILE) proves the shipped copy is the store's. Prints the size and
sha256 to put in immiscible_policy/data/PUSHT_LOWDIM.md.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

from immiscible_policy.data import ReplayBuffer
from immiscible_policy.data.pusht_lowdim import DATA_KEYS, EMBEDDED_PUSHT, write_lowdim_npz
from immiscible_policy.policy.dataset import default_pusht_zarr


def extract(zarr: str, out: Path) -> str:
    """Write ``out`` from the store ``zarr``; returns its sha256."""
    buf = ReplayBuffer.open(zarr, keys=DATA_KEYS)
    write_lowdim_npz({k: buf[k] for k in DATA_KEYS}, buf.episode_ends, out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "zarr", nargs="?", default=None, help="pusht_cchi_v7_replay.zarr (default: the shared one)"
    )
    parser.add_argument(
        "--out", type=Path, default=EMBEDDED_PUSHT, help=f"output file (default {EMBEDDED_PUSHT})"
    )
    parser.add_argument("--check", action="store_true", help="compare with --out instead of overwriting it")
    args = parser.parse_args(argv)
    zarr = args.zarr or default_pusht_zarr()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            sha = extract(zarr, Path(tmp) / "pusht_lowdim.npz")
        shipped = hashlib.sha256(args.out.read_bytes()).hexdigest() if args.out.is_file() else "missing"
        same = sha == shipped
        print(f"{zarr} -> sha256 {sha}; {args.out}: {shipped} ({'identical' if same else 'DIFFERENT'})")
        return 0 if same else 1
    sha = extract(zarr, args.out)
    print(f"{args.out}: {args.out.stat().st_size} bytes, sha256 {sha} (from {zarr})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
