"""What ``immiscible-analyze`` computes per data set and checkpoint (no option parsing, no figures).

Why here and not in the CLI: the analyses must read a run the way its trainer did. A policy
checkpoint's recorded task config picks its task family (:func:`immiscible_policy.policy.tasks.task_env`:
PushT zarr demos, robomimic hdf5 demos) and the dataset is rebuilt through the family's ``make_dataset``
with the run's own horizon, observation history and train/validation split (``val_ratio``,
``split_seed``, ``max_train_episodes``), so "validation observations" and "nearest training chunks"
mean what they meant in training. Image checkpoints use their recorded image task.

Checkpoints are loaded with ``allow_import``: a checkpoint whose assigner is a ``module:Class`` path
(not a registered strategy) is refused unless the caller opts in (``True``, or ``None`` with
``IMMISCIBLE_ALLOW_IMPORT=1``), as ``immiscible-eval`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

#: Data sets ``mixing`` measures, and the schedule each trainer uses on them by default:
#: PushT policies DDPM 100 squaredcos, images DDPM 1000 linear.
DATA = ("pusht", "fashion_mnist")
SCHEDULES = {"pusht": (100, "squaredcos_cap_v2"), "fashion_mnist": (1000, "linear")}


# ------------------------------------------------------------------------------------------- demo data


def pusht_action_batch(batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, 16, 2) normalised action chunks from the real PushT demos (train split)."""
    from immiscible_policy.policy.dataset import PushTLowdimDataset

    ds = PushTLowdimDataset()
    act = ds.get_normalizer().normalize("action", ds.all_windows()["action"])
    idx = torch.randperm(act.shape[0], generator=torch.Generator().manual_seed(seed))[:batch]
    return act[idx]


def fashion_mnist_batch(batch: int, seed: int = 0) -> torch.Tensor:
    """(batch, 1, 32, 32) Fashion-MNIST training images in [-1, 1] (padded 28 -> 32, as the image task)."""
    from immiscible_policy.image.data import load_fashion_mnist

    images = load_fashion_mnist().all_images()
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:batch]
    return images[idx]


def mixing_batch(data: str, batch: int) -> torch.Tensor:
    """The clean batch ``mixing`` measures for ``data`` (one of :data:`DATA`; one-line error otherwise)."""
    if data not in DATA:
        raise ValueError(f"data={data!r} is not supported; use one of {', '.join(DATA)}.")
    return (pusht_action_batch if data == "pusht" else fashion_mnist_batch)(batch)


# ------------------------------------------------------------------------------------------- checkpoints


def checkpoint_config(path: str) -> dict:
    """The checkpoint's config.json (one-line errors for a missing or damaged checkpoint)."""
    from immiscible_policy.checkpoint import load_checkpoint

    return load_checkpoint(path).config


def kind_of(config: Mapping[str, Any], path: str) -> tuple[str, str]:
    """('image' | 'policy', task name) from a checkpoint's config (one-line error otherwise)."""
    task = str(config.get("cfg", {}).get("task", {}).get("name", "unknown"))
    if "image" in config:
        return "image", task
    if "policy" in config:
        return "policy", task
    raise ValueError(
        f"{path}: config.json has neither image nor policy metadata; not an immiscible-train checkpoint."
    )


def checkpoint_kind(path: str) -> tuple[str, str]:
    """('image' | 'policy', task name) from a checkpoint's config.json (one-line error otherwise)."""
    return kind_of(checkpoint_config(path), path)


def require_policy_checkpoint(path: str, command: str) -> str:
    """The task of a policy checkpoint; a one-line error naming ``command`` for any other kind."""
    kind, task = checkpoint_kind(path)
    if kind != "policy":
        raise ValueError(f"{path} is a {task} {kind} checkpoint; {command} needs a policy checkpoint.")
    return task


def task_family(config: Mapping[str, Any]) -> str:
    """The task family (``pusht`` | ``robomimic``) of a policy checkpoint's recorded task config."""
    from immiscible_policy.policy.tasks import task_env

    return task_env(config.get("cfg", {}).get("task", {})).name


def policy_dataset(task: Any):
    """The run's dataset, built by its task family with the run's own split (``task``: the recorded
    task config of a policy checkpoint)."""
    from immiscible_policy.policy.tasks import task_env

    return task_env(task).make_dataset(task)


def run_label(label: str | None, ck) -> str:
    """``label`` when given, else the checkpoint's assigner name (else its run directory's name)."""
    return label or str((ck.config.get("assigner") or {}).get("name", ck.path.parent.parent.name))


def policy_checkpoint_bijectivity(
    path: str,
    *,
    n: int,
    conditions: int,
    steps: int,
    refine: int,
    device: str,
    allow_import: bool | None = None,
):
    """(result, checkpoint): DDIM round trips of a policy checkpoint on its own validation windows."""
    from immiscible_policy.analysis.bijectivity import policy_bijectivity
    from immiscible_policy.policy.load import load_policy

    _, policy, cfg, ck = load_policy(path, device=device, allow_import=allow_import)
    res = policy_bijectivity(
        policy,
        policy_dataset(cfg.task),
        n=n,
        conditions=conditions,
        steps=steps,
        fixed_point_iters=refine,
    )
    return {"checkpoint": str(ck.path), "assigner": ck.config.get("assigner"), **res}, ck


def image_checkpoint_bijectivity(
    path: str,
    *,
    n: int,
    steps: int,
    seed: int,
    batch: int,
    refine: int,
    device: str,
    allow_import: bool | None = None,
    n_nearest: int = 12,
):
    """(result, checkpoint, (samples, nearest images)): DDIM round trips of an image checkpoint; the
    first ``n_nearest`` samples and their nearest training images (in [0, 1]) are for the figure."""
    from immiscible_policy.analysis.bijectivity import image_bijectivity
    from immiscible_policy.image.data import load_dataset, to_unit
    from immiscible_policy.image.diffusion import load_image_diffusion

    diffusion, cfg, ck = load_image_diffusion(path, device=device, allow_import=allow_import)
    ds = load_dataset(cfg.task)
    res, samples, nearest = image_bijectivity(
        lambda x, t, lab: diffusion.predict(x, t, None if lab is None else lab.to(x.device)),
        diffusion.core,
        ds.images,
        ds.labels,
        n=n,
        steps=steps,
        seed=seed,
        batch_size=batch,
        num_classes=ds.num_classes,
        conditional=diffusion.num_classes > 0,
        device=diffusion.device,
        fixed_point_iters=refine,
    )
    res = {"checkpoint": str(ck.path), "assigner": ck.config.get("assigner"), "dataset": ds.ref_key, **res}
    k = n_nearest
    return res, ck, (samples[:k], to_unit(ds.images[nearest[:k]]))


def check_modes_checkpoint(path: str) -> None:
    """``modes`` classifies contacts with PushT's T: refuse anything but a PushT-family policy."""
    config = checkpoint_config(path)
    kind, task = kind_of(config, path)
    if kind != "policy" or task_family(config) != "pusht":
        raise ValueError(f"{path} is a {task} {kind} checkpoint; modes needs a PushT policy checkpoint.")


def checkpoint_modes(
    path: str,
    label: str | None,
    *,
    seeds: Sequence[int],
    n_rollouts: int,
    seed: int,
    sampler: str | None,
    num_inference_steps: int | None,
    max_steps: int,
    margin: float,
    device: str,
    allow_import: bool | None = None,
):
    """(result, checkpoint): first-contact sides of ``n_rollouts`` rollouts from each PushT start seed."""
    import numpy as np

    from immiscible_policy.analysis.modes import rollout_modes
    from immiscible_policy.policy.load import load_policy

    check_modes_checkpoint(path)
    _, policy, cfg, ck = load_policy(path, device=device, allow_import=allow_import)
    policy.sampler = str(policy.sampler if sampler is None else sampler)
    policy.num_inference_steps = int(
        policy.num_inference_steps if num_inference_steps is None else num_inference_steps
    )
    dev = policy.device
    per_start = []
    for k, start in enumerate(tqdm(seeds, desc=f"modes {run_label(label, ck)}", leave=False)):
        gen = torch.Generator(device=dev).manual_seed(seed * 100_003 + k)
        per_start.append(
            rollout_modes(
                lambda obs, g=gen: policy.predict_action(obs, generator=g),
                start,
                n_rollouts,
                obs_type=str(cfg.task.obs_type),
                n_obs_steps=policy.n_obs_steps,
                max_steps=max_steps,
                margin=margin,
            )
        )
    result = {
        "checkpoint": str(ck.path),
        "assigner": ck.config.get("assigner"),
        "sampler": f"{policy.sampler} {policy.num_inference_steps} steps",
        "mean_binary_entropy_bits": float(np.mean([s["binary_entropy_bits"] for s in per_start])),
        "starts_with_both_sides": sum(
            s["counts"]["left"] > 0 and s["counts"]["right"] > 0 for s in per_start
        ),
        "starts": per_start,
    }
    return result, ck


def policy_checkpoint_noise_share(
    path: str,
    *,
    n_obs: int,
    samples: int,
    seed: int,
    sampler: str | None,
    num_inference_steps: int | None,
    device: str,
    allow_import: bool | None = None,
):
    """(result, checkpoint): :func:`~immiscible_policy.analysis.noise_share.noise_share` of a policy
    checkpoint on ``n_obs`` evenly spaced windows of its own validation episodes (its training windows,
    said in ``condition_split``, when it has none), with its own sampler unless one is given."""
    from immiscible_policy.analysis.noise_share import noise_share
    from immiscible_policy.policy.load import load_policy

    require_policy_checkpoint(path, "noise_share")
    _, policy, cfg, ck = load_policy(path, device=device, allow_import=allow_import)
    policy.sampler = str(policy.sampler if sampler is None else sampler)
    if num_inference_steps is not None:
        policy.num_inference_steps = int(num_inference_steps)
    windows, split = policy_dataset(cfg.task).conditioning_windows()
    if windows["obs"].shape[0] < 2:
        raise ValueError(f"{path}: the run's dataset has fewer than 2 windows to condition on.")
    pick = torch.linspace(0, windows["obs"].shape[0] - 1, min(n_obs, windows["obs"].shape[0])).long()
    obs = windows["obs"][pick][:, : policy.n_obs_steps]
    res = noise_share(
        lambda o, g: policy.predict_action(o, generator=g),
        obs,
        samples=samples,
        seed=seed,
        device=policy.device,
    )
    result = {
        "checkpoint": str(ck.path),
        "assigner": ck.config.get("assigner"),
        "sampler": f"{policy.sampler} {policy.num_inference_steps} steps",
        "condition_split": split,
        **res,
    }
    return result, ck


def pairing_data(
    data: str | None, checkpoint: str | None, *, mirror: bool = False, allow_import: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str, dict]:
    """(normalised action chunks (N, horizon, A), their pairing conditions (N, C), each window's demo (N,),
    task name, source) for :func:`~immiscible_policy.analysis.leak.recipe_leak`: a low-dim policy run's own
    training windows and condition (``checkpoint``), else the PushT demos at ``data`` (default: the shared
    ones) with the PushT task's defaults (horizon 16, 2 observation steps; ``mirror``: with their
    reflections, as ``task.mirror=true``)."""
    if checkpoint is not None:
        from immiscible_policy.policy.load import load_policy

        task = require_policy_checkpoint(checkpoint, "leak")
        _, policy, cfg, ck = load_policy(checkpoint, device="cpu", allow_import=allow_import)
        if policy.image_shape is not None:
            raise ValueError(f"{checkpoint} is an image policy; leak measures low-dim policies' conditions.")
        ds = policy_dataset(cfg.task)
        normalizer, steps = policy.normalizer, policy.n_obs_steps
        source = {"checkpoint": str(ck.path)}
    else:
        from immiscible_policy.policy.dataset import PushTLowdimDataset

        ds = PushTLowdimDataset(data, mirror=mirror)
        normalizer, steps, task = ds.get_normalizer(), ds.n_obs_steps, "pusht"
        source = {"data": ds.data_source, "mirror": mirror}
    windows = ds.all_windows()
    actions = normalizer.normalize("action", windows["action"])
    cond = normalizer.normalize("obs", windows["obs"])[:, :steps].flatten(1)
    return actions, cond, torch.as_tensor(ds.sampler.window_episode), task, source
