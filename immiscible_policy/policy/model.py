"""``DiffusionPolicy``: one object per policy (lerobot-style): its network, noising core, normaliser and
sampler, with ``loss(batch)`` for training and ``predict_action(obs)`` for acting.

Conventions follow Diffusion Policy: the network denoises a whole window of ``horizon`` normalised
actions (B, horizon, A) conditioned on the flattened first ``n_obs_steps`` normalised observations;
at inference the actions ``[n_obs_steps - 1, n_obs_steps - 1 + n_action_steps)`` of the sampled
window are executed (the first one aligned with the latest observation).

Why one module: the network alone cannot act (it needs the normaliser, the sampler and the noising core)
and the old ``DiffusionPolicy`` alone could not either (it took the network in every call), so every caller
carried both and a third object (``Policy``) tied them together for users. As an ``nn.Module`` that owns
the network (``self.net``, its only submodule), the policy moves with ``.to(device)``, has exactly the
network's parameters (the optimiser, EMA and DDP see nothing else) and its ``forward`` is the training loss,
so ``DistributedDataParallel(policy)`` works. Checkpoints keep holding ``policy.net.state_dict()`` (the keys
of every existing run); ``policy.state_dict()`` is the same with a ``net.`` prefix.

Layering (docs/architecture.md): a policy is made from a config (:meth:`DiffusionPolicy.from_config`) and
from a checkpoint (:meth:`DiffusionPolicy.from_checkpoint`) here, with modules below this one only (the
networks of :mod:`~immiscible_policy.policy.networks`, the checkpoint reader, the noising core, the
normaliser), so ``from_checkpoint`` works whatever else was imported; :mod:`~immiscible_policy.policy.build`
and :mod:`~immiscible_policy.policy.load` are thin uses of them, and this module imports neither.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from immiscible_policy.checkpoint import (
    Checkpoint,
    check_assigner,
    check_config,
    load_checkpoint,
    load_weights,
)
from immiscible_policy.config_schema import trainer_sampler
from immiscible_policy.diffusion_module import DiffusionModule
from immiscible_policy.host import resolve_device
from immiscible_policy.noising import NoisingCore, TrainingPair, build_core, rename_legacy_objective
from immiscible_policy.policy.networks import ImageConditionedUnet, build_model, image_obs
from immiscible_policy.policy.normalizer import MinMaxNormalizer
from immiscible_policy.policy.vision import centre_offsets, random_offsets

__all__ = [
    "BATCH_KEYS",
    "PAIRING_POOL",
    "DiffusionPolicy",
    "ImageConditionedUnet",
    "Policy",
    "pairing_embedding",
]

#: Pooling of a frame into the cheap fixed embedding image policies pair with (96x96 -> 8x8).
PAIRING_POOL = 12


def pairing_embedding(images: Tensor) -> Tensor:
    """The fixed image part of the condition a condition-aware assigner (c2ot) sees for image policies.

    uint8 (B, To, 3, H, W) -> (B, To * 3 * (H/12) * (W/12)): each frame average-pooled 12x12 (96 -> 8x8)
    as "ink" ``1 - pixel / 255`` (0 on the white background, > 0 where the T, the agent and the goal are).
    Why not the encoder's features: they exist only inside the forward pass and change as it trains; a
    pairing needs its condition before the forward, and one that drifts would re-pair the same window
    differently every epoch. Why ink: with raw intensities the white background dominates every vector and
    cosine distances between frames collapse; the ink map is ~0 except where objects are, comparable in
    norm to the two normalised agent coordinates it is concatenated with.
    """
    b, steps = images.shape[:2]
    x = images.flatten(0, 1).float() / 255.0
    ink = 1.0 - F.avg_pool2d(x, PAIRING_POOL)
    return ink.reshape(b, steps, -1).flatten(1)


#: (obs_norm, action_norm, images) in a ``batch``: what :meth:`DiffusionPolicy.loss` reads
BATCH_KEYS = ("obs", "action", "images")


class DiffusionPolicy(DiffusionModule):
    """A diffusion policy: network + noising core + normaliser + sampler settings.

    Train: ``loss, per_sample, pair = policy.loss(batch, generator)`` with ``batch = {"obs": (B, >=To,
    obs_dim), "action": (B, horizon, A)}`` normalised (+ ``"images"``: uint8 (B, >=To, 3, H, W) for image
    policies). Act: ``policy.predict_action(obs_history)`` in env units, sampling from the policy's own
    generator (seeded by ``seed``, so a rollout is repeatable). Load: ``DiffusionPolicy.from_checkpoint(path)``.
    """

    def __init__(
        self,
        net: nn.Module,
        core: NoisingCore,
        normalizer: MinMaxNormalizer | None,
        *,
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        action_dim: int,
        num_inference_steps: int = 100,
        sampler: str | None = None,
        image_shape: tuple[int, int, int] | None = None,
        crop: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(net, core, seed)
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps = {n_obs_steps - 1 + n_action_steps} exceeds horizon "
                f"{horizon}; lower n_action_steps or raise horizon."
            )
        self.normalizer = normalizer
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.action_dim = action_dim
        #: ``trainer.sampler``'s meaning for a policy (None or ``auto``: DDPM, or the objective's own), checked
        #: against the objective here rather than at the first rollout
        self.num_inference_steps = num_inference_steps
        self.sampler = trainer_sampler({"sampler": sampler}, core.objective, "policy")
        #: image policies (the net is an :class:`ImageConditionedUnet`): frame shape (3, H, W) and crop size
        self.image_shape = None if image_shape is None else tuple(int(d) for d in image_shape)
        if self.image_shape is not None and crop is None:
            crop = net.encoder.crop
        self.crop = crop

    # ------------------------------------------------------------------ the object

    def settings(self) -> dict[str, Any]:
        """Everything but the network, as constructor keywords."""
        return dict(
            core=self.core,
            normalizer=self.normalizer,
            horizon=self.horizon,
            n_obs_steps=self.n_obs_steps,
            n_action_steps=self.n_action_steps,
            action_dim=self.action_dim,
            num_inference_steps=self.num_inference_steps,
            sampler=self.sampler,
            image_shape=self.image_shape,
            crop=self.crop,
            seed=self.seed,
        )

    @classmethod
    def from_config(
        cls, cfg: Any, normalizer: MinMaxNormalizer | None, obs_dim: int, action_dim: int, *, seed: int = 0
    ) -> DiffusionPolicy:
        """The policy of a resolved config (untrained network, on the CPU), as training builds it and a
        checkpoint is rebuilt; ``seed`` seeds :attr:`generator`.

        The core is built before the network, the order every run was trained in (the network's initial
        weights are the global RNG's next draws, so the order is part of a run's numbers)."""
        task, tr = cfg.task, cfg.trainer
        core = build_core(tr, cfg.assigner)
        image = image_obs(task)
        net = build_model(cfg.model, action_dim, obs_dim, int(task.n_obs_steps), image=image)
        size = int(task.get("image_size", 96))
        return cls(
            net,
            core,
            normalizer,
            horizon=int(task.horizon),
            n_obs_steps=int(task.n_obs_steps),
            n_action_steps=int(task.n_action_steps),
            action_dim=action_dim,
            num_inference_steps=int(tr.num_inference_steps),
            sampler=trainer_sampler(tr, core.objective, "policy"),
            image_shape=(3, size, size) if image else None,
            crop=net.encoder.crop if image else None,
            seed=seed,
        )

    @classmethod
    def from_checkpoint_run(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        use_ema: bool = True,
        seed: int = 0,
        allow_import: bool | None = None,
    ) -> tuple[DiffusionPolicy, Any, Checkpoint]:
        """(policy, config, checkpoint) of a checkpoint: :meth:`from_checkpoint`'s policy with its run's
        config (the task, to roll out) and the checkpoint record (path, step, assigner).

        The config is checked before anything is built (one-line errors); registered assigners always
        load, a ``module:Class`` one only with ``allow_import``."""
        ck = load_checkpoint(path)
        check_config(ck.config, ck.path, "policy")
        check_assigner(ck.config, ck.path, allow_import)
        # an old config's trainer.prediction_type is read as trainer.objective
        cfg = rename_legacy_objective(OmegaConf.create(ck.config["cfg"]))
        if ck.normalizer is None:
            raise ValueError(
                f"Checkpoint {ck.path} has no normalizer.json; it was not written by the policy trainer."
            )
        normalizer = MinMaxNormalizer.from_dict(ck.normalizer)
        meta = ck.config["policy"]
        policy = cls.from_config(cfg, normalizer, int(meta["obs_dim"]), int(meta["action_dim"]), seed=seed)
        load_weights(policy.net, *ck.select_weights(use_ema))  # the checkpoint holds the network's state dict
        policy.to(resolve_device(device)).eval()
        return policy, cfg, ck

    # ------------------------------------------------------------------ conditions

    def global_cond(self, obs_norm: Tensor) -> Tensor:
        """(B, >= n_obs_steps, obs_dim) normalised observations -> (B, n_obs_steps * obs_dim)."""
        return obs_norm[:, : self.n_obs_steps].flatten(1)

    def pairing_cond(self, obs_norm: Tensor, images: Tensor | None = None) -> Tensor:
        """The condition a condition-aware assigner pairs within: the U-Net's global condition for low-dim
        policies; for image policies the normalised agent xy of the obs steps followed by
        :func:`pairing_embedding` of their frames (B, To * 2 + To * 192 for PushT)."""
        if images is None:
            return self.global_cond(obs_norm)
        steps = self.n_obs_steps
        return torch.cat([self.global_cond(obs_norm), pairing_embedding(images[:, :steps])], dim=1)

    def _train_crops(self, n: int, generator, device) -> Tensor:
        """Random crop corners (n, To, 2) from the step's generator(s): one slice per rank stream, drawn after
        that slice's noise, so an emulated rank crops exactly as a real one."""
        gens = list(generator) if isinstance(generator, Sequence) else [generator]
        sizes = [n // len(gens)] * len(gens)
        hw = self.image_shape[1:]
        parts = [  # drawn where each stream lives (a generator only draws on its own device)
            random_offsets(
                (k, self.n_obs_steps), hw, self.crop, generator=g, device=g.device if g else device
            )
            for k, g in zip(sizes, gens)
        ]
        return torch.cat(parts).to(device)

    # ------------------------------------------------------------------ training

    def prepare(
        self,
        batch: Mapping[str, Tensor],
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> tuple[TrainingPair, Tensor | dict[str, Tensor]]:
        """A batch's training pair and the network's condition: everything of a step drawn from its
        generator(s), before the forward (the trainer may prepare the next step ahead, ``trainer.pair_ahead``,
        and pass the result to :meth:`loss` as ``prepared``).

        A list of generators splits the batch into that many rank slices (one stream each), see
        :meth:`~immiscible_policy.noising.NoisingCore.sharded_training_pair`. Image policies also take the
        batch's frames, ``batch["images"]`` uint8 (B, >= n_obs_steps, 3, H, W); their random crops come from
        the same streams. ``batch["groups"]`` (B,) labels: neighbour batches (``trainer.neighbour_batches``),
        whose groups a condition-aware assigner pairs within.
        """
        obs_norm, action_norm, images = (batch.get(k) for k in BATCH_KEYS)
        # low-dim: what the U-Net sees is what a condition-aware pairing sees; image: see pairing_cond
        cond = self.pairing_cond(obs_norm, images)
        groups = batch.get("groups")  # neighbour batches: pair within these groups instead
        if isinstance(generator, Sequence):
            tp = self.core.sharded_training_pair(action_norm, generator, cond=cond, groups=groups)
        else:
            tp = self.core.training_pair(action_norm, generator=generator, cond=cond, groups=groups)
        net_cond: Tensor | dict[str, Tensor] = cond
        if self.image_shape is not None:
            if images is None:
                raise ValueError("an image policy's loss needs the batch's frames (batch['images'])")
            steps = self.n_obs_steps
            crops = self._train_crops(action_norm.shape[0], generator, action_norm.device)
            net_cond = {"image": images[:, :steps], "agent_pos": obs_norm[:, :steps], "crop": crops}
        return tp, net_cond

    def forward(
        self,
        batch: Mapping[str, Tensor] | None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        prepared: tuple[TrainingPair, Tensor | dict[str, Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor, TrainingPair]:
        """The training loss (what ``DistributedDataParallel(policy)(batch, generator)`` computes); see
        :meth:`loss`."""
        tp, net_cond = prepared if prepared is not None else self.prepare(batch, generator)
        pred = self.net(tp.x_t, tp.model_timesteps, net_cond)
        per_sample = F.mse_loss(pred, tp.target, reduction="none").flatten(1).mean(1)
        return per_sample.mean(), per_sample, tp

    def loss(
        self,
        batch: Mapping[str, Tensor] | None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        prepared: tuple[TrainingPair, Tensor | dict[str, Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor, TrainingPair]:
        """Mean loss, per-sample loss (B,) and the training pair of a normalised batch (:meth:`prepare`d
        here from ``generator``, or given as ``prepared``, when ``batch`` is not read and may be None).

        Gradients reach the network's parameters only (the policy has no others). The trainer calls the
        (DDP-wrapped) policy itself, ``policy(None, prepared=pair)``: the same loss through :meth:`forward`,
        which is what lets DDP synchronise the gradients.
        """
        return self(batch, generator, prepared=prepared)

    # ------------------------------------------------------------------ acting

    @torch.no_grad()
    def predict_action(
        self, obs_history: np.ndarray | Tensor, generator: torch.Generator | None = None
    ) -> np.ndarray:
        """(n_obs_steps, obs_dim) -> (n_action_steps, A); batched (n, n_obs_steps, obs_dim) -> (n, n_action_steps, A).

        Observations and actions are in env units (PushT: pixels). The sampling noise comes from
        ``generator``, else from the policy's own :attr:`generator`.
        """
        device = self.device
        if not isinstance(obs_history, Tensor):
            obs_history = np.asarray(obs_history, dtype=np.float32)
        obs = torch.as_tensor(obs_history, dtype=torch.float32, device=device)
        single = obs.dim() == 2
        if single:
            obs = obs[None]
        if obs.dim() != 3 or obs.shape[1] < self.n_obs_steps:
            raise ValueError(
                f"obs_history must be ({self.n_obs_steps}, obs_dim) or (n, {self.n_obs_steps}, obs_dim), got "
                f"shape {tuple(obs_history.shape)}."
            )
        net = self.net
        if self.image_shape is None:
            cond = self.global_cond(self.normalizer.normalize("obs", obs))
            denoise = lambda x, t: net(x, t, cond)  # noqa: E731
        else:
            images, agent = self.split_image_obs(obs[:, : self.n_obs_steps])
            crop = centre_offsets(images.shape[:2], self.image_shape[1:], self.crop, device=device)
            cond = net.global_cond(images, self.normalizer.normalize("obs", agent), crop)  # encoded once
            denoise = lambda x, t: net.unet(x, t, cond)  # noqa: E731
        traj = self.core.sample(
            denoise,
            (obs.shape[0], self.horizon, self.action_dim),
            num_inference_steps=self.num_inference_steps,
            sampler=self.sampler,
            generator=self.generator if generator is None else generator,
            device=device,
        )
        actions = self.normalizer.unnormalize("action", traj)
        start = self.n_obs_steps - 1
        actions = actions[:, start : start + self.n_action_steps].cpu().numpy()
        return actions[0] if single else actions

    def split_image_obs(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """A flat image observation (..., 3*H*W + agent_dim), the env's layout (CHW pixels 0..255, then the
        agent xy), -> uint8 frames (..., 3, H, W) and the agent xy (..., agent_dim)."""
        n_pix = int(np.prod(self.image_shape))
        if obs.shape[-1] <= n_pix:
            raise ValueError(
                f"image observations must be (..., {n_pix} + agent_dim) (CHW pixels then the agent xy), got "
                f"{tuple(obs.shape)}; was the env made with obs_type='image'?"
            )
        frames = obs[..., :n_pix].round().clamp(0, 255).to(torch.uint8)
        return frames.reshape(*obs.shape[:-1], *self.image_shape), obs[..., n_pix:]


class Policy(DiffusionPolicy):
    """Deprecated name of :class:`DiffusionPolicy` (which now loads and acts itself); kept so that
    ``Policy.from_checkpoint(path).predict_action(obs)`` and ``Policy(model, diffusion, seed)`` keep working."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        if len(args) >= 2 and isinstance(args[1], DiffusionPolicy):  # the old Policy(model, diffusion, seed)
            _deprecated(stacklevel=3)
            model, diffusion, *rest = args
            settings = {**diffusion.settings(), "seed": rest[0] if rest else kw.pop("seed", 0), **kw}
            super().__init__(model, **settings)
            self.eval()
        else:
            super().__init__(*args, **kw)

    @classmethod
    def from_checkpoint(cls, *args: Any, **kw: Any) -> DiffusionPolicy:
        _deprecated(stacklevel=3)
        return super().from_checkpoint(*args, **kw)

    @property
    def model(self) -> nn.Module:
        """The old ``Policy.model``: the network."""
        return self.net

    @property
    def diffusion(self) -> DiffusionPolicy:
        """The old ``Policy.diffusion``: the policy itself."""
        return self


def _deprecated(stacklevel: int) -> None:
    warnings.warn(
        "immiscible_policy's Policy is now DiffusionPolicy (same from_checkpoint and predict_action); "
        "Policy will be removed.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
