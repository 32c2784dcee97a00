"""Non-finite numbers stop a run, and never reach a checkpoint, an evaluation or a score.

Why: ``trainer.lr=1e30`` used to train on with ``loss nan``, exit 0, save NaN checkpoints and let
``keep_last`` prune the good ones; evaluating NaN weights printed hundreds of simulator tracebacks and
then ``mean_score 0.000``. PyTorch Lightning stops on a non-finite loss (``check_finite``); so do we:

* :class:`NonFiniteGuard` watches every step's loss and gradient norm in the training loop;
* :func:`non_finite` finds the first non-finite entry of weights, optimiser state or a normaliser: the
  checkpoint writer refuses to save one and the loader refuses to load one, so pruning (which runs only
  after a successful save) can never remove the last good checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor


class NonFiniteError(ValueError):
    """A non-finite loss, gradient norm, weight or output (one-line message)."""


def non_finite(value: Any, name: str = "") -> str | None:
    """The name of the first entry of ``value`` (tensors, arrays, numbers, nested mappings / lists) that
    holds NaN or inf, with what it holds (``'down.0.weight' holds nan``); None when all are finite."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = value[~finite].flatten()[0].item()
                return f"{name or 'value'} holds {bad}"
        return None
    if isinstance(value, np.ndarray | np.generic) or (isinstance(value, list) and _numeric(value)):
        arr = np.asarray(value)
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            return f"{name or 'value'} holds {arr[~np.isfinite(arr)].flat[0]}"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{name or 'value'} is {value}"
    if isinstance(value, Mapping):
        items: Iterable[tuple[str, Any]] = ((str(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        found = non_finite(item, f"{name}.{key}" if name else key)
        if found:
            return found
    return None


def _numeric(values: list) -> bool:
    """A (nested) list of plain numbers, checked in one numpy call instead of item by item."""
    try:
        return np.asarray(values).dtype.kind in "fiuc"
    except (ValueError, TypeError):
        return False


class NonFiniteGuard:
    """Stops training at a non-finite loss or gradient norm, naming the step.

    Why this shape: reading a device number on the host (``bool(t)``) waits for everything queued on an
    accelerator, which the loop otherwise never does between records (see ``StepStats``). So:

    * on the CPU with one process there is no queue to wait for: each step is checked as it ends
      (:meth:`update` costs one ``bool``), and a diverged run stops at the very step it diverged;
    * on an accelerator, or under several processes, :meth:`update` only keeps the first bad step in a
      device tensor (no sync), and :meth:`check` reads it once at the next record / checkpoint boundary,
      where the loop syncs for its record anyway. The trainers call :meth:`check` before every record
      and every checkpoint, so a non-finite state is never logged as a number nor saved. Under several
      processes the flag is summed over them (``reduce``), so all ranks stop at the same boundary (one
      rank raising alone would leave the others waiting at a collective).

    :meth:`check` also tests the weights themselves (one pass over them per boundary): a step can leave
    them non-finite with a finite loss and no gradient norm to look at (``trainer.grad_clip=null``).
    ``describe()`` returns the end of the message (the last finite checkpoint, the fix).
    """

    def __init__(
        self,
        device: torch.device,
        *,
        eager: bool,
        describe: Callable[[], str] = lambda: "",
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.eager, self.describe, self.reduce = bool(eager), describe, reduce
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def update(self, step: int, loss: Tensor, grad_norm: Tensor | None = None) -> None:
        """After step ``step`` (1-based): record (or, eagerly, raise on) a non-finite loss / grad norm."""
        ok = torch.isfinite(loss.detach())
        if grad_norm is not None:
            ok = ok & torch.isfinite(grad_norm.detach())
        if self.eager:
            if not bool(ok):
                what = f"the loss is {loss.item():g}"
                if grad_norm is not None and bool(torch.isfinite(loss)):
                    what = f"the gradient norm is {grad_norm.item():g}"
                self._stop(f"at step {step}: {what}")
            return
        first = (~ok) & (self.first_bad < 0)
        self.first_bad = torch.where(first, torch.full_like(self.first_bad, step), self.first_bad)

    def check(self, model: torch.nn.Module, step: int) -> None:
        """At a record / checkpoint boundary (after step ``step``): raise if any step since the start was
        non-finite, or the weights are."""
        device = self.first_bad.device
        finite = [torch.isfinite(p.detach()).all().to(device) for p in model.parameters()]
        weights_ok = torch.stack(finite).all() if finite else torch.ones((), dtype=torch.bool, device=device)
        flags = torch.stack([self.first_bad >= 0, ~weights_ok]).to(torch.float32)
        if self.reduce is not None:
            flags = self.reduce(flags)
        bad_step, bad_weights = (float(v) for v in flags.tolist())
        if bad_step:
            first = int(self.first_bad)
            self._stop(
                f"at step {first}: the loss or gradient norm is not finite"
                if first >= 0
                else f"by step {step} (on another process): the loss or gradient norm is not finite"
            )
        if bad_weights:
            self._stop(f"by step {step}: the weights hold nan or inf")

    def _stop(self, what: str) -> None:
        raise NonFiniteError(f"training diverged {what}; {self.describe()}".rstrip("; "))
