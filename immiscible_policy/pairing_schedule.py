"""When and how much of a batch is paired: the pairing schedule of the noising core.

Why a schedule: *Immiscible Diffusion Policy* (arXiv 2610.09369) pairs only after a warm-up (plain
independent noise for the first epochs), and a pilot on PushT found that pairing only part of each batch
keeps a warmed-up policy's score where pairing all of it breaks it. The schedule lives in the core, not in
a strategy, so every assigner (plugins included) and both trainers get it for free.

Three settings, read from the assigner config (``assigner.start_epoch``, ``assigner.fraction``,
``assigner.ramp_epochs``; the strategy's own options stay under ``assigner.params``)::

    share(e) = 0                                           e < start_epoch
             = fraction                                    ramp_epochs = 0
             = fraction * min(1, (e - start_epoch + 1) / ramp_epochs)   otherwise

``e`` is the 0-based epoch of the training step. ``round(share * B)`` rows of a batch of B are paired
(a random subset drawn from the step's generator; all rows when the share is 1); the other rows keep the
noise they were drawn with. Share 0 is bit-identical to ``assigner=vanilla``: the strategy is not called
and nothing extra is drawn from the generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: the assigner config's keys that belong to the schedule (beside ``name`` and ``params``)
SCHEDULE_KEYS = ("start_epoch", "fraction", "ramp_epochs")


def _non_negative_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"assigner.{key}={value!r}: use an integer >= 0 (epochs).")
    return int(value)


@dataclass(frozen=True)
class PairingSchedule:
    """Which share of each batch is paired at an epoch (see the module docstring for the formula)."""

    start_epoch: int = 0
    fraction: float = 1.0
    ramp_epochs: int = 0

    def __post_init__(self) -> None:
        _non_negative_int(self.start_epoch, "start_epoch")
        _non_negative_int(self.ramp_epochs, "ramp_epochs")
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0.0 <= float(f) <= 1.0:
            raise ValueError(
                f"assigner.fraction={f!r}: use a number in [0, 1] (the share of each batch that is paired)."
            )
        object.__setattr__(self, "fraction", float(f))

    @classmethod
    def from_config(cls, cfg: Any) -> PairingSchedule:
        """The schedule of an assigner config (a dict or an OmegaConf node; absent keys take defaults)."""
        if cfg is None:
            return cls()
        get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: d)
        values = {k: get(k) for k in SCHEDULE_KEYS if get(k) is not None}
        return cls(**values)

    @property
    def always_full(self) -> bool:
        """True for the default (every row paired from the first step): the core's path before schedules."""
        return self.start_epoch == 0 and self.fraction == 1.0 and self.ramp_epochs == 0

    def share(self, epoch: int | float) -> float:
        """The paired share of a batch at 0-based ``epoch``."""
        if epoch < self.start_epoch:
            return 0.0
        if self.ramp_epochs == 0:
            return self.fraction
        return self.fraction * min(1.0, (int(epoch) - self.start_epoch + 1) / self.ramp_epochs)

    @staticmethod
    def rows(share: float, batch: int) -> int:
        """How many of ``batch`` rows are paired at ``share`` (all of them at 1, none at 0)."""
        return batch if share >= 1.0 else int(round(share * batch))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_schedule_fits(schedule: PairingSchedule, assigner: Any) -> None:
    """One-line error when a partial or delayed schedule cannot serve ``assigner``.

    A strategy that transforms data space (``decode`` is not the identity, e.g. ``scale``) cannot pair part
    of a batch: the unpaired rows would train at another scale than the sampler decodes.
    """
    if schedule.always_full:
        return
    from immiscible_policy.assigners.base import Assigner

    if type(assigner).decode is not Assigner.decode:
        raise ValueError(
            f"assigner {assigner.name!r} transforms the data (its decode is not the identity), so it cannot "
            "pair part of a batch or start late: drop assigner.start_epoch / fraction / ramp_epochs "
            "(defaults 0 / 1.0 / 0) for it."
        )
