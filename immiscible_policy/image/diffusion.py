"""``ImageDiffusion``: one object per image diffusion model: its ``UNet2DModel``, noising core, sampler
settings and class conditioning, with ``loss(batch)`` for training and ``sample(n)`` for drawing images.

Why one module (as :class:`~immiscible_policy.policy.model.DiffusionPolicy` for policies): drawing images
needs the network, the core (objective, scheduler, the assigner's ``decode``), the sampler, the image shape,
the number of classes and the autocast setting, which callers used to pass around as nine loose arguments
through four functions. As an ``nn.Module`` whose only submodule is the network (``self.net``) it has
exactly the network's parameters (the optimiser, EMA and DDP see nothing else), moves with ``.to(device)``,
and its ``forward`` is the training loss, so ``DistributedDataParallel(diffusion)`` works. Checkpoints keep
holding ``diffusion.net.state_dict()`` (the keys of every existing run).

Objectives (``trainer.objective``, the factory in :mod:`immiscible_policy.noising`): ``epsilon``,
``v_prediction`` and ``sample`` sample with DDIM (n steps) or DDPM; ``flow`` with Euler or Heun steps.
Sampling ends in the assigner's ``decode`` (inside :meth:`NoisingCore.sample`), so e.g. ``scale`` is undone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

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
from immiscible_policy.image.data import to_unit
from immiscible_policy.image.model import build_unet, predict
from immiscible_policy.noising import NoisingCore, TrainingPair, build_core, rename_legacy_objective

__all__ = ["ImageDiffusion", "build_image_diffusion", "load_image_diffusion", "sample_labels"]


def sample_labels(n: int, num_classes: int) -> Tensor | None:
    """(n,) class labels cycling 0..K-1 (balanced classes for FID), or None for an unconditional model."""
    return torch.arange(n) % num_classes if num_classes else None


class ImageDiffusion(DiffusionModule):
    """An image diffusion model: network + noising core + sampler settings + class conditioning.

    Train: ``loss, per_sample, pair = diffusion.loss({"images": x, "labels": y}, generator)``. Draw:
    ``diffusion.sample(n, seed=0)`` -> (n, C, S, S) in [-1, 1] on the CPU. Load:
    ``ImageDiffusion.from_checkpoint(path)``.

    Args:
        net: a diffusers ``UNet2DModel`` (``net(x, t, class_labels=...).sample``).
        core: the noising core the network was trained with.
        sampler: ``ddim`` / ``ddpm`` (diffusion objectives) or ``euler`` / ``heun`` (flow); None or ``auto``:
            what the image trainer's ``auto`` means (DDIM, or the objective's own: Euler), decided by its
            schema (:func:`~immiscible_policy.config_schema.trainer_sampler`). Checked against the objective
            here, not at the first sample.
        num_inference_steps: the default of :meth:`sample`.
        num_classes, channels, image_size: default from ``net.config`` (``num_class_embeds``,
            ``in_channels``, ``sample_size``); 0 classes = unconditional.
        bf16: run the network under bf16 autocast (CUDA training; the loss stays float32).
        seed: seeds :attr:`generator`, the stream :meth:`sample` draws from when given no seed.
    """

    def __init__(
        self,
        net: nn.Module,
        core: NoisingCore,
        *,
        sampler: str | None = None,
        num_inference_steps: int = 50,
        num_classes: int | None = None,
        channels: int | None = None,
        image_size: int | None = None,
        bf16: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(net, core, seed)
        self.sampler = trainer_sampler({"sampler": sampler}, core.objective, "image")
        self.num_inference_steps = int(num_inference_steps)
        config = getattr(net, "config", None)
        self.num_classes = int(num_classes if num_classes is not None else config.num_class_embeds or 0)
        self.channels = int(channels if channels is not None else config.in_channels)
        self.image_size = int(image_size if image_size is not None else config.sample_size)
        self.bf16 = bool(bf16)

    def settings(self) -> dict[str, Any]:
        """Everything but the network, as constructor keywords."""
        return dict(
            core=self.core,
            sampler=self.sampler,
            num_inference_steps=self.num_inference_steps,
            num_classes=self.num_classes,
            channels=self.channels,
            image_size=self.image_size,
            bf16=self.bf16,
            seed=self.seed,
        )

    @classmethod
    def from_checkpoint_run(cls, path: str | os.PathLike, **load: Any) -> tuple[ImageDiffusion, Any, Any]:
        """(model, config, checkpoint) of an image checkpoint: :func:`load_image_diffusion`."""
        return load_image_diffusion(path, **load)

    # ------------------------------------------------------------------ the network

    def predict(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The network's float32 prediction (B, C, H, W) for noised ``x`` at timesteps ``t`` (B,), under
        bf16 autocast when :attr:`bf16`."""
        return self._predict(self.net, x, t, labels)

    def _predict(self, net: nn.Module, x: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return predict(net, x, t, labels).float()

    def _labels(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """The batch's class labels when the model is class-conditional (then they must be there); an
        unconditional model's condition is nothing, whatever labels the dataset has."""
        if not self.num_classes:
            return None
        labels = batch.get("labels")
        if labels is None:
            raise ValueError(
                f"a class-conditional model ({self.num_classes} classes) needs the batch's labels "
                "(batch['labels'])"
            )
        return labels

    # ------------------------------------------------------------------ training

    def prepare(
        self,
        batch: Mapping[str, Tensor],
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> tuple[TrainingPair, Tensor | None]:
        """(training pair, labels or None) of a batch: everything of a step drawn from its generator(s)
        before the forward (so a trainer may prepare the next step ahead, ``trainer.pair_ahead``).

        ``batch["images"]``: (B, C, H, W) uint8 (scaled to [-1, 1] here) or float already in [-1, 1];
        ``batch["labels"]``: (B,) class labels, the condition of a class-conditional model (and of a
        condition-aware assigner). A list of generators splits the batch into that many rank slices, one
        stream each (:meth:`~immiscible_policy.noising.NoisingCore.sharded_training_pair`).
        """
        x0 = batch["images"]
        if x0.dtype == torch.uint8:
            x0 = to_unit(x0)
        labels = self._labels(batch)
        if isinstance(generator, Sequence):
            return self.core.sharded_training_pair(x0, generator, cond=labels), labels
        return self.core.training_pair(x0, generator=generator, cond=labels), labels

    def forward(
        self,
        batch: Mapping[str, Tensor] | None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        prepared: tuple[TrainingPair, Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor, TrainingPair]:
        """The training loss (what ``DistributedDataParallel(diffusion)(batch, generator)`` computes); see
        :meth:`loss`."""
        tp, labels = prepared if prepared is not None else self.prepare(batch, generator)
        pred = self._predict(self.net, tp.x_t, tp.model_timesteps, labels)
        per_sample = F.mse_loss(pred, tp.target, reduction="none").flatten(1).mean(1)  # float32 MSE
        return per_sample.mean(), per_sample, tp

    def loss(
        self,
        batch: Mapping[str, Tensor] | None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        prepared: tuple[TrainingPair, Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor, TrainingPair]:
        """Mean loss, per-sample loss (B,) and the training pair of a batch (:meth:`prepare`d here from
        ``generator``, or given as ``prepared``, when ``batch`` is not read and may be None). The network
        runs under bf16 autocast when :attr:`bf16`; the MSE is taken in float32. Gradients reach the
        network's parameters only (the model has no others)."""
        return self(batch, generator, prepared=prepared)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int | None = None,
        sampler: str | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        batch_size: int = 64,
    ) -> Tensor:
        """(n, C, S, S) float32 samples in [-1, 1] on the CPU, decoded by the assigner.

        ``steps`` / ``sampler``: default :attr:`num_inference_steps` / :attr:`sampler`. The starting noise of
        every batch is drawn in turn from ``generator``, else from a generator seeded by ``seed``, else from
        :attr:`generator`; so the same (seed, n, batch_size) gives the same images. ``labels`` (n,): the
        classes to draw (class-conditional models); default: cycling 0..K-1 (balanced, as FID wants).
        """
        device = self.device
        if generator is None:
            generator = (
                self.generator if seed is None else torch.Generator(device=device).manual_seed(int(seed))
            )
        if labels is None:
            labels = sample_labels(n, self.num_classes)
        elif not self.num_classes:
            raise ValueError("labels given, but the model is unconditional (num_classes=0)")
        elif labels.shape != (n,):
            raise ValueError(f"labels must be ({n},), got {tuple(labels.shape)}")
        steps = self.num_inference_steps if steps is None else steps
        sampler = self.sampler if sampler is None else sampler
        shape = (self.channels, self.image_size, self.image_size)
        out = []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            lab = None if labels is None else labels[start : start + b].to(device)
            x = self.core.sample(
                lambda x, t, lab=lab: self.predict(x, t, lab),
                (b, *shape),
                num_inference_steps=steps,
                sampler=sampler,
                generator=generator,
                device=device,
            )
            out.append(x.clamp(-1, 1).float().cpu())
        return torch.cat(out)


def build_image_diffusion(
    cfg: Any, *, image_size: int, channels: int, num_classes: int = 0, seed: int = 0
) -> ImageDiffusion:
    """The :class:`ImageDiffusion` of a resolved config (untrained network) for (channels, image_size^2)
    images and ``num_classes`` classes (0: unconditional); the trainer's sampler and steps."""
    core = build_core(cfg.trainer, cfg.assigner)  # before the network, as the image trainer builds them
    net = build_unet(cfg.model, image_size=image_size, channels=channels, num_classes=num_classes)
    return _assemble(cfg, net, core, seed)


def _assemble(cfg: Any, net: nn.Module, core: NoisingCore, seed: int) -> ImageDiffusion:
    """The model around a built network and core, with the config's sampler and steps."""
    tr = cfg.trainer
    sampler = trainer_sampler(tr, core.objective, "image")
    return ImageDiffusion(
        net, core, sampler=sampler, num_inference_steps=int(tr.num_inference_steps), seed=seed
    )


def load_image_diffusion(
    checkpoint: str | os.PathLike,
    device: str = "auto",
    use_ema: bool = True,
    seed: int = 0,
    allow_import: bool | None = None,
) -> tuple[ImageDiffusion, Any, Checkpoint]:
    """(model, config, checkpoint) of an image checkpoint, the model in eval mode on ``device``; the EMA
    weights by default.

    The config is checked before anything is built (one-line errors for a foreign or incomplete
    config.json, an unregistered ``module:Class`` assigner unless ``allow_import``), and the weights against
    the recorded network before the rest is (weights that do not fit are the error to report first)."""
    ck = load_checkpoint(checkpoint)
    check_config(ck.config, ck.path, "image")
    check_assigner(ck.config, ck.path, allow_import)
    cfg = rename_legacy_objective(OmegaConf.create(ck.config["cfg"]))  # trainer.prediction_type: objective
    meta = ck.config["image"]
    net = build_unet(
        cfg.model,
        image_size=int(meta["image_size"]),
        channels=int(meta["channels"]),
        num_classes=int(meta["num_classes"]),
    )
    load_weights(net, *ck.select_weights(use_ema))  # the checkpoint holds the network's state dict
    diffusion = _assemble(cfg, net, build_core(cfg.trainer, cfg.assigner), seed)
    diffusion.to(resolve_device(device)).eval()
    return diffusion, cfg, ck
