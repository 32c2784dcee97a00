"""``immiscible-convert SRC DEST``: diffusion_policy zarr or robomimic hdf5 demos -> LeRobotDataset v3.0.

So demos collected or used here (PushT, ``immiscible-collect`` robomimic files) can be shared and trained on
the way LeRobot users expect, and ``task=lerobot`` reads them back window for window (docs/lerobot.md).

SRC is a zarr store directory (``data/<key>``, ``meta/episode_ends``) or a robomimic ``.hdf5``/``.h5`` file.
Options (key=value): episodes (first N episodes; default all), fps (zarr 10, hdf5 20: PushT's and
robosuite's control rates), task (the episodes' task text), robot_type, overwrite (false),
obs_keys (hdf5 only: the low-dim keys to keep; default diffusion_policy's set
[object,robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos]).

``overwrite=true`` replaces only an empty folder or an earlier output of this command (it carries a
``.immiscible-output`` marker); DEST and SRC nested either way are refused. The output is written beside
DEST and swapped in at the end, so an interrupted conversion leaves the previous output as it was.

Features written, low-dim only (image keys are skipped):
- zarr: ``action``; every other low-dim ``data/<key>`` as ``observation.<key>`` (flattened per step);
  a PushT store (``state`` + ``keypoint``) instead gets LeRobot's PushT names: ``observation.state`` =
  agent xy (2), ``observation.environment_state`` = the 9 block keypoints (18), plus
  ``observation.pusht_state`` = our ``obs_type=state`` observation (6), so
  ``obs_keys=[observation.environment_state,observation.state]`` is ``obs_type=keypoints`` exactly.
- hdf5: ``action`` and ``observation.<key>`` per obs key; the file's env_args go to ``meta/immiscible.json``
  (``task.eval_env=robomimic`` rebuilds the env from it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from immiscible_policy.cli._kv import bool_option, int_option, parse_kv, run_kv_cli

OPTIONS = ("episodes", "fps", "task", "robot_type", "overwrite", "obs_keys")
ROBOMIMIC_OBS_KEYS = ("object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
LOWDIM_MAX = 256
COMMAND = "immiscible-convert"  # numbers per step above which a zarr key counts as an image / not low-dim


def _first(ends: np.ndarray, n: int | None) -> np.ndarray:
    if n is None:
        return ends
    if n > len(ends):
        raise ValueError(f"episodes={n}: the source has only {len(ends)} episodes")
    return ends[:n]


def zarr_arrays(path: str, n_episodes: int | None) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """(features, episode_ends, extra) from a diffusion_policy zarr store (see the module docstring)."""
    from immiscible_policy.data import ReplayBuffer
    from immiscible_policy.policy.dataset import pusht_obs

    lazy = ReplayBuffer.open(path, lazy=True)
    names = lazy.keys()  # a method, not a dict
    keys = [
        k
        for k in names
        if int(np.prod(lazy[k].shape[1:])) <= LOWDIM_MAX
        and not (lazy[k].ndim >= 4 or lazy[k].dtype == np.uint8)
    ]
    if "action" not in keys:
        raise ValueError(f"{path} has no low-dim data/action; keys: {', '.join(names)}")
    buf = ReplayBuffer.open(path, keys=keys)
    ends = _first(np.asarray(buf.episode_ends, dtype=np.int64), n_episodes)
    n = int(ends[-1])
    data = {k: np.asarray(buf[k][:n]) for k in keys}
    out = {"action": data.pop("action").reshape(n, -1)}
    if "state" in data and "keypoint" in data:  # PushT: LeRobot's names, and our two observation types
        state, keypoint = data.pop("state"), data.pop("keypoint")
        out["observation.state"] = state[:, :2]
        out["observation.environment_state"] = keypoint.reshape(n, -1)
        out["observation.pusht_state"] = pusht_obs(state, None, "state")
    out.update({f"observation.{k}": v.reshape(n, -1) for k, v in data.items()})
    return out, ends, {"source": str(path), "format": "diffusion_policy zarr"}


def hdf5_arrays(path: str, obs_keys: list[str], n_episodes: int | None) -> tuple[dict, np.ndarray, dict]:
    """(features, episode_ends, extra) from a robomimic hdf5 file; env_args recorded in ``extra``."""
    from immiscible_policy.data.robomimic_hdf5 import load_robomimic

    data = load_robomimic(path, obs_keys)
    buf = data.buffer
    ends = _first(np.asarray(buf.episode_ends, dtype=np.int64), n_episodes)
    n = int(ends[-1])
    obs = np.asarray(buf["obs"][:n])
    out = {"action": np.asarray(buf["action"][:n])}
    offset = 0
    for key in data.obs_keys:
        dim = data.obs_dims[key]
        out[f"observation.{key}"] = obs[:, offset : offset + dim]
        offset += dim
    extra = {"source": str(path), "format": "robomimic hdf5", "env_args": data.env_args}
    return out, ends, extra


def check_destination(src: str, dest: str, overwrite: bool) -> None:
    """Before any work: DEST is not nested with SRC, is absent or replaceable (``overwrite=true`` on an
    empty folder or an earlier output of this command, which carries ``.immiscible-output``), and can be
    written; one-line errors, so a mistyped DEST never costs a conversion or anyone's files."""
    from immiscible_policy.outputs import check_not_nested, check_replaceable, check_writable

    check_not_nested(src, dest)
    check_replaceable(dest, overwrite=overwrite, command=COMMAND)
    check_writable(Path(dest).parent)  # the output is built beside DEST and renamed into place


def convert(src: str, dest: str, opts: dict) -> str:
    from immiscible_policy.data.lerobot_writer import write_lerobot

    n = int_option(opts, "episodes", 0, 1) if "episodes" in opts else None
    overwrite = bool_option(opts, "overwrite", False)
    source = Path(src)
    if not source.exists():
        raise ValueError(f"{src}: no such file or directory (a .zarr store or a robomimic .hdf5)")
    check_destination(src, dest, overwrite)
    if source.is_dir():
        if "obs_keys" in opts:
            raise ValueError("obs_keys applies to hdf5 sources only; a zarr store converts every low-dim key")
        arrays, ends, extra = zarr_arrays(src, n)
        fps = 10
    elif source.suffix.lower() in (".hdf5", ".h5"):
        keys = opts.get("obs_keys", list(ROBOMIMIC_OBS_KEYS))
        if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"obs_keys={keys!r}: use a list, e.g. 'obs_keys=[object,robot0_eef_pos]'")
        arrays, ends, extra = hdf5_arrays(src, list(keys), n)
        fps = 20
    else:
        raise ValueError(f"{src}: not a zarr store directory or a .hdf5/.h5 file")
    try:
        fps = float(opts.get("fps", fps))
    except (TypeError, ValueError):
        raise ValueError(f"fps={opts['fps']!r}: use a number > 0") from None
    if not fps > 0:
        raise ValueError(f"fps={opts['fps']!r}: use a number > 0")
    root = write_lerobot(
        dest,
        arrays,
        ends,
        fps=fps,
        task=str(opts.get("task", "")),
        robot_type=opts.get("robot_type"),
        overwrite=overwrite,
        extra=extra,
        made_by=COMMAND,
    )
    keys = ", ".join(f"{k} ({v.shape[1]})" for k, v in arrays.items())
    return f"wrote {root}: LeRobotDataset v3.0, {len(ends)} episodes, {int(ends[-1])} frames; features {keys}"


def _work(argv: list[str]) -> str:
    opts, words = parse_kv(argv, OPTIONS, positional=True)
    if len(words) != 2:
        raise ValueError("usage: immiscible-convert SRC DEST [episodes=N fps=F task=TEXT overwrite=true ...]")
    return convert(words[0], words[1], opts)


def main(argv: list[str] | None = None) -> int:
    return run_kv_cli(__doc__, argv, _work)


if __name__ == "__main__":
    sys.exit(main())
