"""What every model kind shares: a module that owns its network and noising core and samples from its own
seeded stream (:class:`~immiscible_policy.policy.model.DiffusionPolicy`,
:class:`~immiscible_policy.image.diffusion.ImageDiffusion`).

Why a base: both kinds must make a rollout or a sample grid repeatable from one seed, on whatever device
the network has moved to, and restartable before each evaluation; written once here, the two kinds cannot
drift apart on it (lerobot's policies own their scheduler and sampling state the same way).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn


class DiffusionModule(nn.Module):
    """``net`` (the only submodule: the parameters are the network's), ``core`` (the noising core) and a
    sampling stream seeded by ``seed``. A kind adds its settings and returns them from :meth:`settings`."""

    def __init__(self, net: nn.Module, core: Any, seed: int = 0) -> None:
        super().__init__()
        self.net, self.core = net, core
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def generator(self) -> torch.Generator:
        """The stream sampling draws from when given no generator, seeded by ``seed`` on the net's device.

        Made at first use, and made again from ``seed`` if the net has moved to another device since (a
        generator draws only on its own device)."""
        device = self.device
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def reset(self, seed: int | None = None) -> None:
        """Restart the sampling stream from ``seed`` (default: the model's), e.g. before each evaluation."""
        if seed is not None:
            self.seed = int(seed)
        self._generator = None

    def settings(self) -> dict[str, Any]:
        """Everything but the network, as the kind's constructor keywords (``core`` and ``seed`` included)."""
        raise NotImplementedError

    def with_net(self, net: nn.Module) -> Any:
        """This model around another network of the same shape (core, normaliser and settings shared, not
        copied), e.g. the EMA copy of a network that the trainer evaluates; its mode follows ``net``'s."""
        return type(self)(net, **self.settings()).train(net.training)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str = "auto",
        use_ema: bool = True,
        seed: int = 0,
        allow_import: bool | None = None,
    ) -> Any:
        """The model of a checkpoint (a run dir, its ``checkpoints/`` or one step dir), in eval mode.

        The EMA weights by default (what training evaluates); ``seed`` seeds :attr:`generator`. A
        ``module:Class`` strategy in the checkpoint's config is imported only with ``allow_import=True``
        (``None``: when ``IMMISCIBLE_ALLOW_IMPORT=1``). :meth:`from_checkpoint_run` also returns the run's
        config and checkpoint record."""
        model, _, _ = cls.from_checkpoint_run(
            path, device=device, use_ema=use_ema, seed=seed, allow_import=allow_import
        )
        return model

    @classmethod
    def from_checkpoint_run(cls, path: str | os.PathLike, **load: Any) -> tuple[Any, Any, Any]:
        """(model, config, checkpoint) of a checkpoint; each kind reads its own."""
        raise NotImplementedError
