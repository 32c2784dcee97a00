"""The 1-D temporal U-Net of Diffusion Policy (Chi et al., 2023), written for this project.

Why a 1-D U-Net: an action chunk ``(T, action_dim)`` is a short time series, so convolving over time
(channels = action dimensions) gives the model a smoothness prior that an MLP lacks. Conditioning enters
every residual block by FiLM: a per-channel scale and bias predicted from ``[step embedding, global obs]``.

Shapes: ``sample (B, T, input_dim)`` -> ``(B, T, input_dim)``; ``T`` is halved ``len(down_dims) - 1`` times
on the way down, so it must be divisible by ``2 ** (len(down_dims) - 1)`` (T=16 with 3 levels: 16 -> 8 -> 4).
The block layout and parameter count match diffusion_policy's ``ConditionalUnet1D`` (without local cond).
"""

from __future__ import annotations

import torch
from torch import nn

from immiscible_policy.policy.embeddings import SinusoidalPosEmb


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish; keeps the length ``T`` (odd kernel, "same" padding).

    ``(B, C_in, T) -> (B, C_out, T)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM between them, plus a (1x1 conv) residual path.

    FiLM = ``scale * h + bias`` per channel, both predicted from ``cond``; with ``cond_predict_scale=False``
    only the bias is predicted (diffusion_policy's older variant). ``x (B, C_in, T), cond (B, cond_dim) ->
    (B, C_out, T)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
            ]
        )
        self.out_channels = out_channels
        self.cond_predict_scale = cond_predict_scale
        film_dim = 2 * out_channels if cond_predict_scale else out_channels
        # Mish before the Linear: the cond vector is the raw (un-activated) output of the step MLP + obs.
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, film_dim))
        self.residual_conv = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](x)
        film = self.cond_encoder(cond).unsqueeze(-1)  # (B, film_dim, 1): broadcast over T
        if self.cond_predict_scale:
            scale, bias = film.chunk(2, dim=1)
            h = scale * h + bias
        else:
            h = h + film
        h = self.blocks[1](h)
        return h + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Denoiser for action chunks: ``forward(sample (B, T, input_dim), timestep, global_cond (B, G))``.

    Args:
        input_dim: action dimension (2 for PushT).
        global_cond_dim: length of the flattened observation history (``n_obs_steps * obs_dim``); 0 for none.
        diffusion_step_embed_dim: width of the sinusoidal step embedding (its MLP widens 4x in between).
        down_dims: channels per level; one downsample between consecutive levels.
        kernel_size: temporal kernel of every conv block (odd).
        n_groups: GroupNorm groups; must divide every entry of ``down_dims``.
        cond_predict_scale: FiLM with scale and bias (True) or bias only.
    """

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        diffusion_step_embed_dim: int = 128,
        down_dims: tuple[int, ...] | list[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        cond_predict_scale: bool = True,
    ):
        super().__init__()
        down_dims = tuple(int(d) for d in down_dims)
        if not down_dims:
            raise ValueError("down_dims must name at least one level, e.g. (64, 128, 256)")
        bad = [d for d in down_dims if d % n_groups]
        if bad:
            raise ValueError(
                f"n_groups={n_groups} must divide every entry of down_dims={down_dims}; bad: {bad}"
            )
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the length T, got {kernel_size}")
        self.input_dim = input_dim
        self.global_cond_dim = global_cond_dim
        self.down_dims = down_dims

        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, 4 * dsed), nn.Mish(), nn.Linear(4 * dsed, dsed)
        )
        cond_dim = dsed + global_cond_dim

        def res(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(
                c_in, c_out, cond_dim, kernel_size, n_groups, cond_predict_scale
            )

        in_out = list(zip((input_dim,) + down_dims[:-1], down_dims))
        self.down_modules = nn.ModuleList()
        for level, (c_in, c_out) in enumerate(in_out):
            is_last = level == len(in_out) - 1
            down = nn.Identity() if is_last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down_modules.append(nn.ModuleList([res(c_in, c_out), res(c_out, c_out), down]))

        mid = down_dims[-1]
        self.mid_modules = nn.ModuleList([res(mid, mid), res(mid, mid)])

        # Up path: one level per downsample; input = current features concatenated with the skip.
        self.up_modules = nn.ModuleList()
        for c_in, c_out in reversed(in_out[1:]):
            up = nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)
            self.up_modules.append(nn.ModuleList([res(2 * c_out, c_in), res(c_in, c_in), up]))

        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], input_dim, 1),
        )

    @property
    def horizon_multiple(self) -> int:
        """``T`` must be a multiple of this (2 to the number of downsamples)."""
        return 2 ** (len(self.down_dims) - 1)

    def _timesteps(
        self, timestep: torch.Tensor | int | float, batch: int, device: torch.device
    ) -> torch.Tensor:
        """Broadcast an int, a 0-d tensor or a ``(B,)`` tensor to ``(B,)``."""
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"timestep must be a scalar or shape ({batch},), got shape {tuple(t.shape)}")
        return t

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        global_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``sample (B, T, input_dim)``, ``timestep`` int / 0-d / ``(B,)``, ``global_cond (B, G)`` -> ``(B, T, input_dim)``."""
        if sample.ndim != 3 or sample.shape[-1] != self.input_dim:
            raise ValueError(f"sample must be (B, T, {self.input_dim}), got shape {tuple(sample.shape)}")
        batch, horizon = sample.shape[0], sample.shape[1]
        if horizon % self.horizon_multiple:
            raise ValueError(
                f"horizon T={horizon} must be divisible by {self.horizon_multiple} "
                f"(2 ** (len(down_dims) - 1) for down_dims={self.down_dims})"
            )
        cond = self.diffusion_step_encoder(self._timesteps(timestep, batch, sample.device))
        if self.global_cond_dim:
            if global_cond is None or tuple(global_cond.shape) != (batch, self.global_cond_dim):
                got = None if global_cond is None else tuple(global_cond.shape)
                raise ValueError(f"global_cond must be ({batch}, {self.global_cond_dim}), got {got}")
            cond = torch.cat([cond, global_cond.to(cond.dtype)], dim=-1)

        x = sample.transpose(1, 2)  # (B, C, T): convolve over time
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for block in self.mid_modules:
            x = block(x, cond)
        # The deepest skip pairs with the mid output; the shallowest (full-length) one is not used, as in
        # diffusion_policy, so that the parameter count and checkpoints stay comparable.
        for (res1, res2, up), skip in zip(self.up_modules, reversed(skips[1:])):
            x = torch.cat([x, skip], dim=1)
            x = up(res2(res1(x, cond), cond))
        return self.final_conv(x).transpose(1, 2)
