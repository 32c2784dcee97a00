"""``immiscible-collect task=robomimic_lift n_episodes=200``: scripted demos in robomimic's hdf5 format.

Runs the task's scripted expert (Lift, PickPlaceCan) with small random noise on seeds seed, seed+1, ...
until ``n_episodes`` episodes succeeded, keeps only those, writes them (with the env's ``env_args``, the
MuJoCo states and mask/train + mask/valid) and reports the expert's success rate.

Options (key=value): task (robomimic_lift | robomimic_can; required), n_episodes, n_attempts (run exactly
this many seeds and keep the successes instead; measures the expert's rate), output (default: the
task's dataset_path), seed (first env seed, 0), noise_std (action noise, 0.05), max_steps (default: the
task's eval.max_steps), max_attempts (default 2 * n_episodes + 10), valid_ratio (0.1), extra_steps (steps
recorded after success, 5), overwrite (false), progress (true).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from immiscible_policy.cli._kv import parse_kv, run_kv_cli

OPTIONS = (
    "task",
    "n_episodes",
    "n_attempts",
    "output",
    "seed",
    "noise_std",
    "max_steps",
    "max_attempts",
    "valid_ratio",
    "extra_steps",
    "overwrite",
    "progress",
)


def load_task(name: str) -> Any:
    """The task's Hydra yaml (plain OmegaConf; collect needs no composition)."""
    from omegaconf import OmegaConf

    from immiscible_policy.cli._hydra import config_dir

    tasks = sorted(p.stem for p in (Path(config_dir()) / "task").glob("*.yaml"))
    path = Path(config_dir()) / "task" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(tasks)}")
    task = OmegaConf.load(path)
    if task.get("env") != "robomimic":
        robo = [
            t
            for t in tasks
            if OmegaConf.load(Path(config_dir()) / "task" / f"{t}.yaml").get("env") == "robomimic"
        ]
        raise ValueError(f"task {name!r} has no scripted expert; collect works for: {', '.join(robo)}")
    return task


def run_episode(env, expert, seed: int, max_steps: int, extra_steps: int) -> tuple[bool, dict[str, Any]]:
    """One expert episode from env seed ``seed``; returns (success, robomimic episode dict).

    Records obs (every robosuite low-dim key, ``object-state`` as ``object``), the MuJoCo state before
    each action, and stops ``extra_steps`` steps after the first success (or at ``max_steps``).
    """
    env.reset(seed=seed)
    expert.reset(env)
    raw = env.raw_obs()
    obs: dict[str, list[np.ndarray]] = {}
    actions, rewards, states = [], [], []
    success_at = None
    for t in range(max_steps):
        for k, v in raw.items():
            if k.endswith("-state") and k != "object-state":
                continue  # robot0_proprio-state etc. are concatenations of the stored keys
            obs.setdefault("object" if k == "object-state" else k, []).append(np.asarray(v, dtype=np.float64))
        states.append(env.get_state())
        action = expert.act(raw)
        env.step(action)
        raw = env.raw_obs()
        success = env.is_success()
        actions.append(action)
        rewards.append(float(success))
        if success and success_at is None:
            success_at = t
        if success_at is not None and t - success_at >= extra_steps:
            break
    n = len(actions)
    dones = np.zeros(n)
    dones[-1] = 1.0
    episode = {
        "obs": {k: np.stack(v) for k, v in obs.items()},
        "actions": np.stack(actions),
        "rewards": np.asarray(rewards),
        "dones": dones,
        "states": np.stack(states),
        "model_file": env.robosuite_env.sim.model.get_xml(),
    }
    return success_at is not None, episode


#: the ``data`` attribute every file this command writes carries (its report): what overwrite may replace
MARK_ATTR = "immiscible_collect"


def written_here(path: Path) -> bool:
    """Whether ``path`` is an hdf5 file this command wrote (its ``data`` group holds :data:`MARK_ATTR`)."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "data" in f and MARK_ATTR in f["data"].attrs
    except Exception:  # not hdf5, unreadable, h5py missing: not ours
        return False


def check_output(output: Path, overwrite: bool) -> None:
    """Before any episode is run: ``output`` is new, or (``overwrite=true``) a file this command wrote,
    never a downloaded dataset or a folder; and its folder can be written (one-line errors)."""
    from immiscible_policy.outputs import check_writable

    if output.exists() or output.is_symlink():
        if not overwrite:
            raise ValueError(f"{output} already exists; pass overwrite=true or another output=PATH")
        if not written_here(output):
            raise ValueError(
                f"{output} was not written by immiscible-collect (no data.attrs[{MARK_ATTR!r}]); overwrite=true "
                "replaces only an earlier immiscible-collect file: pass another output=PATH or move it away yourself"
            )
    check_writable(output.parent)


def collect(opts: dict) -> dict:
    from immiscible_envs.robomimic import RobomimicEnv, default_env_args
    from tqdm.auto import tqdm

    from immiscible_policy.collect import make_expert
    from immiscible_policy.data.robomimic_hdf5 import write_robomimic

    if "task" not in opts:
        raise ValueError("missing task=NAME (robomimic_lift or robomimic_can)")
    task = load_task(str(opts["task"]))
    n_target = int(opts.get("n_episodes", task.collect.n_episodes))
    if n_target < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_target}")
    output = Path(str(opts.get("output", task.dataset_path)))
    check_output(output, bool(opts.get("overwrite", False)))
    seed0 = int(opts.get("seed", task.collect.seed))
    max_steps = int(opts.get("max_steps", task.eval.max_steps))
    max_attempts = int(opts.get("max_attempts", 2 * n_target + 10))
    extra = int(opts.get("extra_steps", 5))
    env_args = default_env_args(str(task.env_name))
    env = RobomimicEnv(env_args=env_args, obs_keys=list(task.obs_keys))
    expert = make_expert(
        env.env_name,
        np.random.default_rng(seed0),
        noise_std=float(opts.get("noise_std", task.collect.noise_std)),
    )

    n_attempts = int(opts["n_attempts"]) if "n_attempts" in opts else None
    if n_attempts is not None:
        n_target, max_attempts = n_attempts, n_attempts
    kept, lengths, attempts = [], [], 0
    t0 = time.time()
    bar = tqdm(total=n_target, desc=f"collect {env.env_name}", disable=not opts.get("progress", True))
    try:
        while (attempts if n_attempts is not None else len(kept)) < n_target:
            if attempts >= max_attempts:
                raise ValueError(
                    f"the {env.env_name} expert succeeded in only {len(kept)} of {attempts} attempts "
                    f"(max_attempts={max_attempts}); raise max_attempts or lower noise_std"
                )
            ok, ep = run_episode(env, expert, seed0 + attempts, max_steps, extra)
            attempts += 1
            if ok:
                kept.append(ep)
                lengths.append(len(ep["actions"]))
            if ok or n_attempts is not None:
                bar.update(1)
            bar.set_postfix(success=f"{len(kept) / attempts:.2f}")
    finally:
        bar.close()
        env.close()
    if not kept:
        raise ValueError(
            f"the {env.env_name} expert succeeded in none of {attempts} attempts; nothing written"
        )
    report = {
        "task": str(task.name),
        "env_name": env.env_name,
        "expert_success_rate": len(kept) / attempts,
        "attempts": attempts,
        "kept": len(kept),
        "seeds": [seed0, seed0 + attempts - 1],
        "mean_length": float(np.mean(lengths)),
        "minutes": (time.time() - t0) / 60,
        "output": str(output),
    }
    write_robomimic(
        output,
        kept,
        env_args,
        valid_ratio=float(opts.get("valid_ratio", 0.1)),
        seed=seed0,
        attrs={MARK_ATTR: json.dumps(report)},
        overwrite=bool(opts.get("overwrite", False)),
    )
    return report


def _work(argv: list[str]) -> str:
    opts, _ = parse_kv(argv, OPTIONS)
    r = collect(opts)
    return (
        f"{r['env_name']} expert success rate {r['expert_success_rate']:.3f} ({r['kept']}/{r['attempts']} "
        f"episodes, mean length {r['mean_length']:.1f}, {r['minutes']:.1f} min) -> {r['output']}"
    )


def main(argv: list[str] | None = None) -> int:
    return run_kv_cli(__doc__, argv, _work)


if __name__ == "__main__":
    sys.exit(main())
