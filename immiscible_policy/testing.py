"""Conformance kit for assigner authors (like Gymnasium's ``check_env``).

Plugin test suites call :func:`check_assigner` on their strategy, or subclass
:class:`AssignerConformance` and implement ``make_assigner``. The checks are the contract every trainer
relies on: the noise keeps the input's shape/dtype/device, the input tensors are not modified, a seeded
generator makes the pairing deterministic, ``decode`` inverts any data-space transform, a strategy
that declares ``preserves_noise_multiset`` really only permutes the noise, and the recorded ``config``
names every constructor option (defaults applied), is JSON-serialisable (checkpoints store it) and
re-creates a strategy with an equal config. A strategy that declares ``uses_cond`` is exercised with
both kinds of condition trainers pass (continuous (B, 6) floats, like a policy's observation history,
and (B,) long class labels), must be deterministic for a given ``cond``, must refuse ``cond=None`` with
a ``ValueError`` (never silently pair without it), and must reject a ``cond`` with the wrong number of
rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from immiscible_policy.assigners.base import SCOPES, Assigner, Pairing

DEFAULT_SHAPES: tuple[tuple[int, ...], ...] = ((16, 16, 2), (8, 3, 8, 8), (5, 32), (1, 16, 2))


class ConformanceError(AssertionError):
    """A strategy broke the assigner contract; the message says which rule and how."""


def _fail(assigner: Assigner, msg: str) -> None:
    raise ConformanceError(f"{type(assigner).__name__} ({getattr(assigner, 'name', '?')}): {msg}")


def _sorted_rows(t: torch.Tensor) -> torch.Tensor:
    flat = t.flatten(1).double()
    # lexicographic-ish canonical order: sort rows by a random projection, ties are measure-zero
    key = flat @ torch.linspace(1.0, 2.0, flat.shape[1], dtype=torch.float64)
    return flat[torch.argsort(key)]


def check_assigner(
    assigner: Assigner,
    shapes: Sequence[tuple[int, ...]] = DEFAULT_SHAPES,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> None:
    """Raise :class:`ConformanceError` if ``assigner`` breaks the contract on any of ``shapes``."""
    if not isinstance(assigner, Assigner):
        raise ConformanceError(f"{assigner!r} is not an immiscible_policy Assigner instance.")
    if not assigner.name:
        _fail(assigner, "class attribute 'name' is empty.")
    if assigner.scope not in SCOPES:
        _fail(assigner, f"scope {assigner.scope!r} is not one of {SCOPES}.")
    _check_config(assigner)
    uses_cond = bool(getattr(assigner, "uses_cond", False))
    for shape in shapes:
        g = torch.Generator(device=device).manual_seed(seed)
        x0 = torch.randn(shape, generator=g, device=device, dtype=dtype)
        noise = torch.randn(shape, generator=g, device=device, dtype=dtype)
        x0_copy, noise_copy = x0.clone(), noise.clone()
        conds = [None]
        if uses_cond:
            conds = [
                torch.randn(shape[0], 6, generator=g, device=device, dtype=dtype),
                torch.randint(0, 3, (shape[0],), generator=g, device=device),
            ]
            _check_cond_errors(assigner, x0, noise, device)
        for cond in conds:
            _check_one(assigner, x0, noise, x0_copy, noise_copy, cond, shape, device, dtype, seed)


def _check_config(assigner: Assigner) -> None:
    """The recorded config names every constructor option, is JSON, and re-creates an equal config."""
    cfg = assigner.config
    if set(cfg) != {"name", "params"} or not isinstance(cfg["params"], dict):
        _fail(assigner, f"config must be {{'name', 'params'}}, got {cfg!r}.")
    params = cfg["params"]
    missing = [n for n in assigner.option_names() if n not in params]
    if missing:
        _fail(
            assigner,
            f"config params {sorted(params)} miss constructor option(s) {missing}; a checkpoint could not "
            "re-create this strategy (options are captured from __init__; do not overwrite _params).",
        )
    try:
        json.dumps(params)
    except (TypeError, ValueError) as exc:
        _fail(assigner, f"config params must be JSON-serialisable (checkpoints store them): {exc}.")
    try:
        again = type(assigner)(**params)
    except Exception as exc:  # noqa: BLE001 - any failure here breaks checkpoint loading
        _fail(assigner, f"{type(assigner).__name__}(**config['params']) failed: {type(exc).__name__}: {exc}")
    if again.config != cfg:
        _fail(assigner, f"re-created from its config, the config changed: {cfg!r} -> {again.config!r}.")


def _check_cond_errors(assigner: Assigner, x0: torch.Tensor, noise: torch.Tensor, device) -> None:
    """``uses_cond`` strategies refuse a missing or misshapen condition with a ValueError."""
    for bad, what in (
        (None, "cond=None"),
        (torch.zeros(x0.shape[0] + 1, 6, device=device), "cond rows != B"),
    ):
        try:
            assigner.pair(x0, noise, generator=torch.Generator(device=device).manual_seed(0), cond=bad)
        except ValueError:
            continue
        _fail(assigner, f"declares uses_cond=True but accepted {what} instead of raising ValueError.")


def _pair(assigner: Assigner, x0, noise, cond, device, seed: int) -> Pairing:
    g = torch.Generator(device=device).manual_seed(seed + 1)
    if cond is None:
        return assigner.pair(x0, noise, generator=g)
    return assigner.pair(x0, noise, generator=g, cond=cond)


def _check_one(assigner, x0, noise, x0_copy, noise_copy, cond, shape, device, dtype, seed) -> None:
    """The contract on one batch (and one condition, for ``uses_cond`` strategies)."""
    out = _pair(assigner, x0, noise, cond, device, seed)
    if not isinstance(out, Pairing):
        _fail(assigner, f"pair() must return a Pairing, got {type(out).__name__}.")
    if not torch.equal(x0, x0_copy) or not torch.equal(noise, noise_copy):
        _fail(assigner, f"pair() modified its inputs in place (shape {shape}).")
    for label, t in (("noise", out.noise), ("x0", out.x0)):
        if t.shape != x0.shape or t.dtype != dtype or t.device != x0.device:
            _fail(
                assigner,
                f"Pairing.{label} is {tuple(t.shape)} {t.dtype} on {t.device}; "
                f"expected {tuple(x0.shape)} {dtype} on {x0.device}.",
            )
    if not isinstance(out.info, dict):
        _fail(assigner, "Pairing.info must be a dict.")
    if not torch.isfinite(out.noise).all():
        _fail(assigner, f"Pairing.noise has non-finite values (shape {shape}).")

    again = _pair(assigner, x0, noise, cond, device, seed)
    if not (torch.equal(out.noise, again.noise) and torch.equal(out.x0, again.x0)):
        _fail(assigner, f"pair() is not deterministic under a seeded generator (shape {shape}).")

    back = assigner.decode(out.x0)
    if back.shape != x0.shape or not torch.allclose(back, x0, rtol=1e-5, atol=1e-5):
        _fail(assigner, f"decode(pair(x0).x0) does not give back x0 (shape {shape}).")

    if assigner.preserves_noise_multiset and not torch.equal(_sorted_rows(out.noise), _sorted_rows(noise)):
        _fail(
            assigner,
            "declares preserves_noise_multiset=True but the returned noise is not a permutation of the "
            f"input noise rows (shape {shape}).",
        )


class AssignerConformance:
    """Reusable pytest base class: subclass it (name starting with ``Test``) and define ``make_assigner``."""

    shapes: Sequence[tuple[int, ...]] = DEFAULT_SHAPES

    def make_assigner(self) -> Assigner:  # pragma: no cover - overridden
        raise NotImplementedError

    def test_conformance(self) -> None:
        check_assigner(self.make_assigner(), self.shapes)

    def test_config_round_trip(self) -> None:
        from immiscible_policy.registry import create_from_config

        a = self.make_assigner()
        b = create_from_config(a.config)
        assert type(b) is type(a) and b.config == a.config
