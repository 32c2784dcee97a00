"""EMA of model weights: diffusers' ``EMAModel`` with diffusion_policy's warm-up, plus checkpoint helpers.

Why diffusers' class: both trainers already depend on diffusers, its ``state_dict`` holds only floats, ints,
bools and a list of tensors (so it loads with ``weights_only=True``), and its decay is diffusion_policy's::

    decay(n) = clip(1 - (1 + s / inv_gamma) ** -power, min_value, max_value),  s = n - update_after_step - 1
    (decay = 0 while s <= 0, i.e. the EMA copies the weights during the first steps)

One difference: diffusers counts the step before computing the decay, diffusion_policy after, so the
warm-up curve is shifted by one optimiser step. Only parameters are averaged; buffers are copied from the
live model (the U-Nets here have no learned buffers; GroupNorm has none).

Checkpointing: ``ema.safetensors`` holds :func:`ema_state_dict_for_model` (a plain model state_dict, so
evaluation loads it into a fresh model); ``training_state["ema"]`` holds :func:`ema_resume_state` (the
counters only), and :func:`restore_ema` rebuilds the EMA exactly from both, without storing the weights twice.
Storing the full ``ema.state_dict()`` in ``training_state`` also works (``load_ema_state``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from diffusers.training_utils import EMAModel
from torch import nn

__all__ = [
    "EMAModel",
    "make_ema",
    "ema_state_dict_for_model",
    "ema_module",
    "ema_resume_state",
    "restore_ema",
    "load_ema_state",
]


def make_ema(
    model: nn.Module,
    *,
    power: float = 0.75,
    inv_gamma: float = 1.0,
    max_value: float = 0.9999,
    min_value: float = 0.0,
    update_after_step: int = 0,
) -> EMAModel:
    """An ``EMAModel`` over ``model.parameters()`` with diffusion_policy's defaults; call ``ema.step(params)``
    after every optimiser step."""
    return EMAModel(
        model.parameters(),
        decay=float(max_value),
        min_decay=float(min_value),
        update_after_step=int(update_after_step),
        use_ema_warmup=True,
        inv_gamma=float(inv_gamma),
        power=float(power),
    )


def _param_names(model: nn.Module) -> list[list[str]]:
    """For each unique parameter (in ``model.parameters()`` order) every state_dict name it has (tied too)."""
    index: dict[int, int] = {}
    names: list[list[str]] = []
    for param in model.parameters():
        index[id(param)] = len(names)
        names.append([])
    for name, param in model.named_parameters(remove_duplicate=False):
        names[index[id(param)]].append(name)
    return names


def _check_matches(ema: EMAModel, model: nn.Module) -> list[nn.Parameter]:
    params = list(model.parameters())
    if len(ema.shadow_params) != len(params):
        raise ValueError(
            f"EMA has {len(ema.shadow_params)} tensors but the model has {len(params)} parameters"
        )
    for i, (shadow, param) in enumerate(zip(ema.shadow_params, params)):
        if shadow.shape != param.shape:
            raise ValueError(
                f"EMA tensor {i} has shape {tuple(shadow.shape)}, parameter {tuple(param.shape)}"
            )
    return params


def ema_state_dict_for_model(ema: EMAModel, model: nn.Module) -> dict[str, torch.Tensor]:
    """The EMA weights as ``model.state_dict()`` (same keys and shapes; buffers from ``model``), detached
    CPU-independent copies, ready for ``ema.safetensors`` or ``model.load_state_dict``."""
    _check_matches(ema, model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for shadow, names in zip(ema.shadow_params, _param_names(model)):
        for name in names:
            state[name] = shadow.detach().clone().to(state[name].device)
    return state


def ema_module(ema: EMAModel, model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` holding the EMA weights, in eval mode and without grads (for evaluation)."""
    averaged = copy.deepcopy(model)
    averaged.load_state_dict(ema_state_dict_for_model(ema, model))
    averaged.requires_grad_(False)
    return averaged.eval()


def ema_resume_state(ema: EMAModel) -> dict[str, Any]:
    """``ema.state_dict()`` without the weights (counters and hyper-parameters; ``weights_only``-safe)."""
    return {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}


def restore_ema(
    ema: EMAModel,
    model: nn.Module,
    *,
    resume_state: Mapping[str, Any],
    ema_model_state: Mapping[str, torch.Tensor],
) -> None:
    """Restore an EMA exactly from ``ema_resume_state`` + the ``ema.safetensors`` state_dict, on the device
    of ``model``'s parameters."""
    params = _check_matches(ema, model)
    shadow = []
    for names, param in zip(_param_names(model), params):
        if names[0] not in ema_model_state:
            raise ValueError(f"EMA weights lack parameter {names[0]!r}")
        shadow.append(ema_model_state[names[0]].detach().clone().to(device=param.device, dtype=param.dtype))
    load_ema_state(ema, {**resume_state, "shadow_params": shadow}, model=model)


def load_ema_state(ema: EMAModel, state: Mapping[str, Any], model: nn.Module | None = None) -> None:
    """``ema.load_state_dict`` (e.g. from a ``weights_only`` load on the CPU), then move the weights next to
    ``model``'s parameters and check they match it when a model is given."""
    ema.load_state_dict(dict(state))
    if model is not None:
        _check_matches(ema, model)
        ema.shadow_params = [
            s.to(device=p.device, dtype=p.dtype) for s, p in zip(ema.shadow_params, model.parameters())
        ]
