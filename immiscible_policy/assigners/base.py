"""The assigner API: how a strategy turns a clean batch and fresh noise into the pair that gets noised.

An assigner is the only thing that differs between vanilla and immiscible diffusion training. It sees
the clean batch ``x0`` (B, ...) and a Gaussian noise batch of the same shape, and returns a
:class:`Pairing`: the (possibly transformed) clean data and the noise each sample will be diffused
towards. Trainers call it through :mod:`immiscible_policy.noising`; they never look inside it.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

SCOPES = ("sample", "batch")


@dataclass
class Pairing:
    """What gets noised.

    Attributes:
        x0: (B, ...) clean data to noise; the input itself unless the strategy transforms data space.
        noise: (B, ...) the noise paired with each row of ``x0``; same shape/dtype/device as the input noise.
        info: cheap diagnostics (0-d tensors or floats), e.g. ``l2_before``, ``l2_after``, ``solver_ms``.
            Values may be device tensors so that a training step needs no host sync to produce them.
    """

    x0: Tensor
    noise: Tensor
    info: dict[str, Any] = field(default_factory=dict)


class Assigner:
    """Base class for noise-assignment strategies (subclass it in a plugin).

    Class attributes a strategy sets:
        name: registry name.
        scope: ``"sample"`` when each sample is paired on its own (no communication, any batch size) or
            ``"batch"`` when the pairing needs the whole batch (e.g. linear assignment).
        description: one line shown by ``immiscible-assigners``.
        preserves_noise_multiset: True when ``pair`` only permutes the input noise, so the batch's noise
            marginal stays exactly Gaussian; the conformance kit checks it when True.
        uses_cond: True when ``pair`` needs the condition of each row (``cond=``): the policy's
            normalised observation history (B, n_obs_steps * obs_dim) or an image model's class labels
            (B,) long. The noising core passes ``cond`` only to strategies that declare it, so a strategy
            written against ``pair(x0, noise, *, generator)`` keeps working unchanged.

    Constructor arguments are the strategy's options. They are captured automatically from the
    subclass's ``__init__`` (its bound arguments, defaults applied; as diffusers' ``register_to_config``)
    and recorded in :attr:`config`, so a checkpoint can re-create the strategy with
    ``registry.create(name, **params)`` and no option can drop out of it. A strategy may still pass
    options to ``super().__init__(k=k, ...)`` (the older plugin style): values given there override the
    captured ones of the same name (e.g. a normalised ``float(s)``), options it leaves out are still
    captured, and ``super().__init__()`` with no arguments is enough.
    """

    name: ClassVar[str] = ""
    scope: ClassVar[str] = "sample"
    description: ClassVar[str] = ""
    preserves_noise_multiset: ClassVar[bool] = False
    uses_cond: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if inspect.isfunction(init) and not getattr(init, "_captures_options", False):
            cls.__init__ = _capturing_init(init)

    def __init__(self, **params: Any) -> None:
        self._params = dict(params)

    @property
    def params(self) -> dict[str, Any]:
        """The options this instance was built with (plain values, JSON-serialisable)."""
        return dict(self._params)

    @property
    def config(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``: enough to re-create this strategy through the registry."""
        return {"name": self.name, "params": self.params}

    def pair(
        self,
        x0: Tensor,
        noise: Tensor,
        *,
        generator: torch.Generator | None = None,
        cond: Tensor | None = None,
    ) -> Pairing:
        """Pair each row of ``x0`` (B, ...) with noise derived from ``noise`` (B, ...).

        ``cond`` (B, ...) is the condition of each row; it is given only when ``uses_cond`` is True.
        """
        raise NotImplementedError

    def decode(self, x0: Tensor) -> Tensor:
        """Inverse of any data-space transform ``pair`` applied; identity by default."""
        return x0

    def data_range(self, r: float) -> float:
        """Bound of |pairing.x0| when the data lies in [-r, r]; samplers clip predictions to it.

        Identity by default; a strategy that rescales data space (``scale``) widens it, otherwise a
        scheduler with ``clip_sample=True`` would clip generated samples to the unscaled range.
        """
        return r

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def option_names(cls) -> list[str]:
        """Names of the keyword options the constructor accepts (for error messages and docs)."""
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]


_CAPTURING = "_assigner_capturing"  # instance flag: set while the outermost constructor runs


def _capturing_init(init: Any) -> Any:
    """Wrap a subclass ``__init__`` so that its bound arguments (defaults applied) become the options.

    Only the outermost constructor of an instance records (a subclass of a strategy calling its parent's
    constructor is re-created through its own signature). The original ``__init__`` runs first, so a
    missing or unknown argument raises Python's own ``TypeError`` and validation errors are unchanged;
    ``inspect.signature`` still sees the original signature (``functools.wraps``).
    """
    sig = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self: Assigner, *args: Any, **kwargs: Any) -> None:
        if self.__dict__.get(_CAPTURING):
            init(self, *args, **kwargs)
            return
        object.__setattr__(self, _CAPTURING, True)
        try:
            init(self, *args, **kwargs)
        finally:
            self.__dict__.pop(_CAPTURING, None)
        explicit = self.__dict__.get("_params") or {}
        self._params = _merge_options(sig, sig.bind(self, *args, **kwargs), explicit)

    __init__._captures_options = True  # type: ignore[attr-defined]
    return __init__


def _merge_options(sig: inspect.Signature, bound: inspect.BoundArguments, explicit: dict) -> dict[str, Any]:
    """The bound constructor arguments (defaults applied, ``**kwargs`` flattened, ``self`` dropped), with
    the values a strategy passed to ``super().__init__`` taking precedence for the names it accepts."""
    bound.apply_defaults()
    params = list(sig.parameters.values())
    options: dict[str, Any] = {}
    var_kw = False
    for p in params[1:]:
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            options.update(bound.arguments.get(p.name, {}))
        elif p.kind is not p.VAR_POSITIONAL:
            options[p.name] = bound.arguments[p.name]
    for k, v in explicit.items():
        if k in options or var_kw:
            options[k] = v
    return options


def check_same_batch(x0: Tensor, noise: Tensor, who: str) -> None:
    """One-line error when x0 and noise cannot be paired (shape or device mismatch)."""
    if x0.shape != noise.shape:
        raise ValueError(
            f"{who}: x0 shape {tuple(x0.shape)} and noise shape {tuple(noise.shape)} differ; "
            "noise must be drawn like x0 (torch.randn_like)."
        )
    if x0.device != noise.device:
        raise ValueError(
            f"{who}: x0 is on {x0.device} but noise is on {noise.device}; put both on one device."
        )
    if x0.dim() < 2:
        raise ValueError(
            f"{who}: expected a batch (B, ...) with at least 2 dims, got shape {tuple(x0.shape)}."
        )


def mean_l2(a: Tensor, b: Tensor) -> Tensor:
    """Mean over the batch of the per-sample L2 distance ||a_i - b_i|| (0-d tensor, no host sync)."""
    return (a - b).flatten(1).float().norm(dim=1).mean().detach()
