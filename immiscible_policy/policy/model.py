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

Layering (docs/architecture.md): this module imports neither :mod:`~immiscible_policy.policy.build` (config
-> policy) nor :mod:`~immiscible_policy.policy.load` (checkpoint -> build); ``from_checkpoint`` calls the
loader that ``load`` registers on import (importing :mod:`immiscible_policy.policy` always does).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from immiscible_policy.noising import NoisingCore, TrainingPair
from immiscible_policy.policy.normalizer import MinMaxNormalizer
from immiscible_policy.policy.unet1d import ConditionalUnet1D
from immiscible_policy.policy.vision import ImageEncoder, centre_offsets, random_offsets

#: Pooling of a frame into the cheap fixed embedding image policies pair with (96x96 -> 8x8).
PAIRING_POOL = 12


class ImageConditionedUnet(nn.Module):
    """A ConditionalUnet1D whose global condition is, per observation step, (encoder(frame), agent xy),
    concatenated over the steps: (B, n_obs_steps * (feature_dim + agent_dim)) as in diffusion_policy.

    The encoder is a submodule, so its weights are in the state dict (checkpoints, EMA, DDP's gradient
    all-reduce); ``forward(x, t, cond)`` takes ``cond = {"image": uint8 (B, To, 3, H, W), "agent_pos":
    normalised (B, To, 2), "crop": (B, To, 2) corners or absent}`` so the encoder runs inside the
    (DDP-wrapped) forward. Sampling encodes once (:meth:`global_cond`) and calls :attr:`unet` per step.
    """

    def __init__(self, encoder: ImageEncoder, unet: ConditionalUnet1D) -> None:
        super().__init__()
        self.encoder, self.unet = encoder, unet

    def global_cond(self, images: Tensor, agent_pos: Tensor, crop: Tensor | None = None) -> Tensor:
        b, steps = images.shape[:2]
        offsets = None if crop is None else crop.flatten(0, 1)
        feats = self.encoder(images.flatten(0, 1), offsets).view(b, steps, -1)  # one encoder, every step
        return torch.cat([feats, agent_pos.to(feats.dtype)], dim=-1).flatten(1)

    def forward(self, sample: Tensor, timestep: Tensor | int | float, cond: Mapping[str, Tensor]) -> Tensor:
        return self.unet(
            sample, timestep, self.global_cond(cond["image"], cond["agent_pos"], cond.get("crop"))
        )


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


class DiffusionPolicy(nn.Module):
    """A diffusion policy: network + noising core + normaliser + sampler settings.

    Train: ``loss, per_sample, pair = policy.loss(batch, generator)`` with ``batch = {"obs": (B, >=To,
    obs_dim), "action": (B, horizon, A)}`` normalised (+ ``"images"``: uint8 (B, >=To, 3, H, W) for image
    policies). Act: ``policy.predict_action(obs_history)`` in env units, sampling from the policy's own
    generator (seeded by ``seed``, so a rollout is repeatable). Load: ``DiffusionPolicy.from_checkpoint(path)``.
    """

    #: the checkpoint loader, registered by :mod:`immiscible_policy.policy.load` when it is imported: it
    #: builds through :mod:`~immiscible_policy.policy.build`, a layer above this module
    _checkpoint_loader: ClassVar[Callable[..., DiffusionPolicy] | None] = None

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
        sampler: str = "ddpm",
        image_shape: tuple[int, int, int] | None = None,
        crop: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"n_obs_steps - 1 + n_action_steps = {n_obs_steps - 1 + n_action_steps} exceeds horizon "
                f"{horizon}; lower n_action_steps or raise horizon."
            )
        self.net = net
        self.core, self.normalizer = core, normalizer
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.action_dim = action_dim
        self.num_inference_steps, self.sampler = num_inference_steps, sampler
        #: image policies (the net is an :class:`ImageConditionedUnet`): frame shape (3, H, W) and crop size
        self.image_shape = None if image_shape is None else tuple(int(d) for d in image_shape)
        if self.image_shape is not None and crop is None:
            crop = net.encoder.crop
        self.crop = crop
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ the object

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def generator(self) -> torch.Generator:
        """The sampling generator :meth:`predict_action` draws from, seeded by ``seed`` on the net's device.

        Made at first use (and made again, from ``seed``, if the net has moved to another device since: a
        generator draws only on its own device)."""
        device = self.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def reset(self, seed: int | None = None) -> None:
        """Restart the sampling stream from ``seed`` (default: the policy's), e.g. before each evaluation."""
        if seed is not None:
            self.seed = int(seed)
        self._generator = None

    def _settings(self) -> dict[str, Any]:
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

    def with_net(self, net: nn.Module) -> DiffusionPolicy:
        """This policy around another network of the same shape (core, normaliser and settings shared, not
        copied), e.g. the EMA copy of a network; the new object's mode follows ``net``'s."""
        other = DiffusionPolicy(net, **self._settings())
        return other.train(net.training)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        use_ema: bool = True,
        seed: int = 0,
        allow_import: bool | None = None,
    ) -> DiffusionPolicy:
        """The policy of a checkpoint (a run dir, its ``checkpoints/`` or one step dir), in eval mode.

        The EMA weights by default (what training evaluates); ``seed`` seeds :attr:`generator`. A
        ``module:Class`` assigner in the checkpoint's config is imported only with ``allow_import=True``
        (``None``: when ``IMMISCIBLE_ALLOW_IMPORT=1``). :func:`immiscible_policy.policy.load.load_policy`
        also returns the run's config and checkpoint record.
        """
        loader = DiffusionPolicy._checkpoint_loader
        if loader is None:  # only if this module was loaded without its package (never by ``import``)
            raise RuntimeError("import immiscible_policy.policy.load to load policy checkpoints")
        policy = loader(path, device=device, use_ema=use_ema, seed=seed, allow_import=allow_import)
        return policy if type(policy) is cls else cls(policy.net, **policy._settings()).eval()

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
        batch: Mapping[str, Tensor] | Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *legacy: Any,
        images: Tensor | None = None,
    ) -> tuple[TrainingPair, Tensor | dict[str, Tensor]]:
        """A batch's training pair and the network's condition: everything of a step drawn from its
        generator(s), before the forward (the trainer may prepare the next step ahead, ``trainer.pair_ahead``,
        and pass the result to :meth:`loss` as ``prepared``).

        A list of generators splits the batch into that many rank slices (one stream each), see
        :meth:`~immiscible_policy.noising.NoisingCore.sharded_training_pair`. Image policies also take the
        batch's frames, ``batch["images"]`` uint8 (B, >= n_obs_steps, 3, H, W); their random crops come from
        the same streams.
        """
        if isinstance(batch, Tensor):  # TRAINERS' CALL: prepare(obs_norm, action_norm, generator, images)
            batch, generator = _legacy_batch(batch, generator, *legacy, images=images)
        elif legacy or images is not None:
            raise TypeError("prepare(batch, generator): the frames go in batch['images']")
        obs_norm, action_norm, images = (batch.get(k) for k in BATCH_KEYS)
        # low-dim: what the U-Net sees is what a condition-aware pairing sees; image: see pairing_cond
        cond = self.pairing_cond(obs_norm, images)
        if isinstance(generator, Sequence):
            tp = self.core.sharded_training_pair(action_norm, generator, cond=cond)
        else:
            tp = self.core.training_pair(action_norm, generator=generator, cond=cond)
        net_cond: Tensor | dict[str, Tensor] = cond
        if self.image_shape is not None:
            if images is None:
                raise ValueError("an image policy's loss needs the batch's frames (images=...)")
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
        return self._loss(self.net, batch, generator, prepared)

    def loss(
        self,
        batch: Mapping[str, Tensor] | nn.Module | None,
        generator: torch.Generator | Sequence[torch.Generator] | Tensor | None = None,
        *legacy: Any,
        images: Tensor | None = None,
        prepared: tuple[TrainingPair, Tensor | dict[str, Tensor]] | None = None,
    ) -> tuple[Tensor, Tensor, TrainingPair]:
        """Mean loss, per-sample loss (B,) and the training pair of a normalised batch (:meth:`prepare`d
        here from ``generator``, or given as ``prepared``, when ``batch`` is not read and may be None).

        Gradients reach the network's parameters only (the policy has no others).
        """
        if isinstance(batch, nn.Module):
            # TRAINERS' CALL until they use .loss(batch): loss(model, obs_norm, action_norm, generator,
            # images=None, prepared=None), the network passed in (the DDP-wrapped one in training)
            net = batch
            batch, generator = _legacy_batch(generator, *legacy, images=images)
            return self._loss(net, batch, generator, prepared)
        if legacy or images is not None:
            raise TypeError("loss(batch, generator, prepared=None): the frames go in batch['images']")
        return self(batch, generator, prepared=prepared)

    def _loss(self, net, batch, generator, prepared) -> tuple[Tensor, Tensor, TrainingPair]:
        tp, net_cond = prepared if prepared is not None else self.prepare(batch, generator)
        pred = net(tp.x_t, tp.model_timesteps, net_cond)
        per_sample = F.mse_loss(pred, tp.target, reduction="none").flatten(1).mean(1)
        return per_sample.mean(), per_sample, tp

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


def _legacy_batch(
    obs_norm: Tensor, action_norm: Tensor, generator: Any = None, images: Tensor | None = None
) -> tuple[dict[str, Tensor], Any]:
    """TRAINERS' CALL (delete with it): the positional (obs_norm, action_norm, generator, images) of the
    old ``prepare`` / ``loss`` as (batch, generator)."""
    batch = {"obs": obs_norm, "action": action_norm}
    if images is not None:
        batch["images"] = images
    return batch, generator


class Policy(DiffusionPolicy):
    """Deprecated name of :class:`DiffusionPolicy` (which now loads and acts itself); kept so that
    ``Policy.from_checkpoint(path).predict_action(obs)`` and ``Policy(model, diffusion, seed)`` keep working."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        if len(args) >= 2 and isinstance(args[1], DiffusionPolicy):  # the old Policy(model, diffusion, seed)
            _deprecated(stacklevel=3)
            model, diffusion, *rest = args
            settings = {**diffusion._settings(), "seed": rest[0] if rest else kw.pop("seed", 0), **kw}
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
