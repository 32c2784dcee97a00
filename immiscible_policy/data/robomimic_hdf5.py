"""Read and write robomimic's hdf5 demonstration format with h5py.

Why h5py and not the ``robomimic`` package: its 0.3 release imports ``mujoco_py`` and cannot run next to
robosuite 1.5, while its *file format* is the standard every robomimic dataset (e.g.
``lift/ph/low_dim_v141.hdf5``) uses::

    data                      attrs: env_args (JSON), total (number of steps)
      demo_<i>                attrs: num_samples, model_file (MuJoCo XML)
        obs/<key>             (T, ...) e.g. robot0_eef_pos (T, 3), object (T, 10)
        actions               (T, A)
        rewards, dones        (T,)
        states                (T, S) flattened MuJoCo state [time, qpos, qvel]
    mask/<filter_key>         (n,) bytes demo names, e.g. mask/train, mask/valid

:func:`load_robomimic` turns the chosen low-dim keys into a :class:`~immiscible_policy.data.ReplayBuffer`
with ``data/obs`` (N, sum of key dims) and ``data/action`` (N, A), demos in numeric order (demo_2 before
demo_10, as diffusion_policy reads them), which the policy's sequence sampler consumes like PushT's zarr.
Every failure is a one-line :class:`RobomimicDatasetError` naming the file, key and what would be right.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from immiscible_policy.data.replay_buffer import ReplayBuffer

__all__ = [
    "RobomimicData",
    "RobomimicDatasetError",
    "load_robomimic",
    "read_env_args",
    "write_robomimic",
]


class RobomimicDatasetError(ValueError):
    """Bad or unreadable robomimic hdf5 file (one-line, actionable message)."""


def _h5py():
    try:
        import h5py
    except ImportError:
        raise RobomimicDatasetError(
            "reading robomimic hdf5 needs h5py; install the extra: pip install -e '.[robomimic]'"
        ) from None
    return h5py


def _demo_index(name: str) -> int:
    m = re.fullmatch(r"demo_(\d+)", name)
    return int(m.group(1)) if m else -1


def _open(path: str | os.PathLike):
    h5py = _h5py()
    p = Path(path)
    if not p.exists():
        raise RobomimicDatasetError(
            f"{p}: no such file; point task.dataset_path at a robomimic hdf5 (e.g. lift/ph/low_dim_v141.hdf5) "
            "or write one with `immiscible-collect task=robomimic_lift`"
        )
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise RobomimicDatasetError(f"{p}: not a readable hdf5 file ({str(exc).splitlines()[0]})") from None
    if "data" not in f:
        f.close()
        raise RobomimicDatasetError(f"{p}: no 'data' group; expected robomimic's data/demo_<i>/... layout")
    return f


def _sorted_demos(f, where: str) -> list[str]:
    demos = [k for k in f["data"] if _demo_index(k) >= 0]
    if not demos:
        raise RobomimicDatasetError(f"{where}: data/ has no demo_<i> groups (found {sorted(f['data'])[:5]})")
    return sorted(demos, key=_demo_index)


def _env_args(f, where: str) -> dict[str, Any]:
    text = f["data"].attrs.get("env_args")
    if text is None:
        raise RobomimicDatasetError(f"{where}: data.attrs has no 'env_args'; cannot tell which env made it")
    if isinstance(text, bytes):
        text = text.decode()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RobomimicDatasetError(f"{where}: data.attrs['env_args'] is not JSON ({exc.msg})") from None


def read_env_args(path: str | os.PathLike) -> dict[str, Any]:
    """The dataset's ``env_args`` dict (env_name, type, env_kwargs)."""
    with _open(path) as f:
        return _env_args(f, str(path))


@dataclass
class RobomimicData:
    """Low-dim demos of one robomimic file, flattened for the sequence sampler.

    ``buffer``: ReplayBuffer with ``obs`` (N, obs_dim) and ``action`` (N, A) float32; ``demos``: the demo
    names in buffer order; ``obs_dims``: key -> width, in ``obs_keys`` order; ``masks``: filter key ->
    demo names; ``initial_states``: (n_demos, S) float64 first ``states`` row of each demo (None if absent).
    """

    path: str
    buffer: ReplayBuffer
    demos: list[str]
    obs_keys: tuple[str, ...]
    obs_dims: dict[str, int]
    env_args: dict[str, Any]
    masks: dict[str, list[str]] = field(default_factory=dict)
    initial_states: np.ndarray | None = None


def _masks(f) -> dict[str, list[str]]:
    if "mask" not in f:
        return {}
    return {k: [n.decode() if isinstance(n, bytes) else str(n) for n in f["mask"][k][:]] for k in f["mask"]}


def load_robomimic(
    path: str | os.PathLike,
    obs_keys: Sequence[str],
    *,
    filter_key: str | None = None,
) -> RobomimicData:
    """Read ``obs_keys`` (concatenated in that order) and ``actions`` of every demo (or of the demos in
    ``mask/<filter_key>``) into memory."""
    where = str(path)
    obs_keys = tuple(obs_keys)
    if not obs_keys:
        raise RobomimicDatasetError(f"{where}: obs_keys is empty; list low-dim keys, e.g. robot0_eef_pos")
    with _open(path) as f:
        env_args = _env_args(f, where)
        demos = _sorted_demos(f, where)
        masks = _masks(f)
        if filter_key is not None:
            if filter_key not in masks:
                raise RobomimicDatasetError(
                    f"{where}: unknown filter_key {filter_key!r}; masks in the file: {sorted(masks) or 'none'}"
                )
            keep = set(masks[filter_key])
            demos = [d for d in demos if d in keep]
            if not demos:
                raise RobomimicDatasetError(f"{where}: mask/{filter_key} selects no demo of data/")
        obs_parts, actions, ends, states0 = [], [], [], []
        dims: dict[str, int] = {}
        total = 0
        for d in demos:
            g = f["data"][d]
            if "actions" not in g:
                raise RobomimicDatasetError(f"{where}: data/{d} has no 'actions' dataset")
            if "obs" not in g:
                raise RobomimicDatasetError(f"{where}: data/{d} has no 'obs' group")
            available = sorted(g["obs"])
            missing = [k for k in obs_keys if k not in g["obs"]]
            if missing:
                raise RobomimicDatasetError(
                    f"{where}: obs key(s) {missing} not in data/{d}/obs; available: {available}"
                )
            act = np.asarray(g["actions"][:], dtype=np.float32)
            parts = []
            for k in obs_keys:
                if len(g["obs"][k]) != len(act) or len(act) == 0:
                    raise RobomimicDatasetError(
                        f"{where}: data/{d}/obs/{k} has {len(g['obs'][k])} rows but actions has {len(act)}"
                    )
                v = np.asarray(g["obs"][k][:], dtype=np.float32).reshape(len(act), -1)
                if dims.setdefault(k, v.shape[1]) != v.shape[1]:
                    raise RobomimicDatasetError(
                        f"{where}: data/{d}/obs/{k} is {v.shape[1]} wide, other demos {dims[k]}"
                    )
                parts.append(v)
            obs_parts.append(np.concatenate(parts, axis=1))
            actions.append(act)
            total += len(act)
            ends.append(total)
            states0.append(np.asarray(g["states"][0], dtype=np.float64) if "states" in g else None)
    have_states = all(s is not None for s in states0)
    buffer = ReplayBuffer(
        {"obs": np.concatenate(obs_parts), "action": np.concatenate(actions)},
        np.asarray(ends, dtype=np.int64),
        path=where,
    )
    for key in ("obs", "action"):
        if not np.isfinite(buffer[key]).all():
            raise RobomimicDatasetError(f"{where}: {key} values contain NaN/Inf")
    return RobomimicData(
        path=where,
        buffer=buffer,
        demos=demos,
        obs_keys=obs_keys,
        obs_dims=dims,
        env_args=env_args,
        masks=masks,
        initial_states=np.stack(states0) if have_states else None,
    )


def write_robomimic(
    path: str | os.PathLike,
    episodes: Sequence[Mapping[str, Any]],
    env_args: Mapping[str, Any],
    *,
    valid_ratio: float = 0.1,
    seed: int = 0,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``episodes`` as ``data/demo_0..`` plus ``mask/train`` / ``mask/valid`` (a seeded split).

    Each episode: ``obs`` (key -> (T, ...)), ``actions`` (T, A), ``rewards`` (T,), ``dones`` (T,),
    ``states`` (T, S) and optionally ``model_file`` (XML text). ``attrs`` go on ``data`` (e.g. how the
    demos were made). Written to a temporary name and renamed, so a killed run leaves no half file.
    """
    h5py = _h5py()
    path = Path(path)
    if path.exists() and not overwrite:
        raise RobomimicDatasetError(f"{path}: already exists; pass overwrite=true to replace it")
    if not episodes:
        raise RobomimicDatasetError(f"{path}: no episodes to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    names = [f"demo_{i}" for i in range(len(episodes))]
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        total = 0
        for name, ep in zip(names, episodes):
            g = data.create_group(name)
            n = len(ep["actions"])
            for key in ("actions", "rewards", "dones", "states"):
                g.create_dataset(key, data=np.asarray(ep[key]))
            obs = g.create_group("obs")
            for key, values in ep["obs"].items():
                values = np.asarray(values)
                if len(values) != n:
                    raise RobomimicDatasetError(
                        f"{path}: {name} obs/{key} has {len(values)} rows, actions {n}"
                    )
                obs.create_dataset(key, data=values)
            g.attrs["num_samples"] = n
            if ep.get("model_file"):
                g.attrs["model_file"] = ep["model_file"]
            total += n
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps(dict(env_args))
        for k, v in (attrs or {}).items():
            data.attrs[k] = v
        rng = np.random.default_rng(seed)
        n_valid = int(round(len(names) * valid_ratio)) if len(names) > 1 else 0
        valid = set(rng.choice(len(names), size=n_valid, replace=False).tolist()) if n_valid else set()
        mask = f.create_group("mask")
        mask.create_dataset(
            "train", data=np.array([n for i, n in enumerate(names) if i not in valid], dtype="S")
        )
        mask.create_dataset("valid", data=np.array([n for i, n in enumerate(names) if i in valid], dtype="S"))
    os.replace(tmp, path)
    return path
