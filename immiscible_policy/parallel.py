"""Multi-process training on Hugging Face ``accelerate`` (torch DDP underneath): who does what.

The rules, the same for both trainers (launch with ``accelerate launch`` or ``torchrun``)::

    b = trainer.batch_size (per rank), W ranks  ->  global batch G = W * b, steps/epoch = n // G
    data:  epoch e's order = epoch_order(seed, e) on every rank; global batch i = order[i*G:(i+1)*G];
           rank r trains on its slice [r*b, (r+1)*b)
    noise: rank r draws its slice's noise, assigner draws and timesteps from noise_generator(seed, r, step)
    loss:  mean over the per-rank batch; DDP averages gradients over ranks, which equals the gradient of
           the global-batch mean (per-rank batches are equal); every rank applies the same AdamW + EMA step
    main process only: logs, config.json, checkpoints, evaluation, progress bars; the others wait
    metrics: summed over ranks at logging time (the only collectives besides DDP's gradient all-reduce)

``trainer.emulate_ranks=W`` makes one process play W ranks by the same rules (it trains on all W slices,
slice r drawing from stream r): a W-process run and a one-process run with ``emulate_ranks=W`` see the
same samples, noise and timesteps and compute the same loss, so their parameters agree up to float
reduction order. That is how the tests check DDP, and how to reproduce a multi-GPU run on one device.

A single-process run (no launcher, or one process) creates no ``Accelerator`` at all: it is exactly the
single-device loop, bit for bit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from immiscible_policy.noising import noise_generator


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE`` from torchrun / accelerate launch), else 1."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def assigner_distributed(assigner: Any) -> str | None:
    """What a multi-rank run does with the assigner: None (sample scope), else ``local`` or ``global``.

    A batch-scope assigner without a ``distributed`` option (a plugin that does not declare it) pairs
    each rank's batch on its own: ``local``.
    """
    if assigner.scope != "batch":
        return None
    return str(assigner.params.get("distributed", "local"))


@dataclass
class Topology:
    """This process's place in the run.

    Attributes:
        device: where this process trains.
        rank: process index (0 = main).
        world_size: processes.
        streams: the rank ids this process plays: ``(rank,)``, or ``0..W-1`` with ``emulate_ranks=W``.
        per_rank_batch: b.
        accelerator: the ``accelerate.Accelerator`` when world_size > 1, else None.
    """

    device: torch.device
    rank: int
    world_size: int
    streams: tuple[int, ...]
    per_rank_batch: int
    accelerator: Any = None

    @property
    def ranks(self) -> int:
        """Ranks of the run (processes times emulated ranks per process)."""
        return self.world_size * len(self.streams)

    @property
    def global_batch(self) -> int:
        return self.per_rank_batch * self.ranks

    @property
    def local_batch(self) -> int:
        """Samples this process trains on per step."""
        return self.per_rank_batch * len(self.streams)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, order: Tensor, i: int) -> Tensor:
        """This process's indices of global batch ``i`` of an epoch ``order``."""
        start = i * self.global_batch + self.streams[0] * self.per_rank_batch
        return order[start : start + self.local_batch]

    def generators(self, seed: int, step: int) -> list[torch.Generator]:
        """One noise generator per rank this process plays, seeded by (seed, rank, step)."""
        return [noise_generator(seed, r, step, self.device) for r in self.streams]

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP-wrapped model for the training forward (the model itself in one process)."""
        if self.accelerator is None:
            return model
        return self.accelerator.prepare_model(model, device_placement=False)

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def sum(self, t: Tensor) -> Tensor:
        """Sum of ``t`` over processes (``t`` itself in one process)."""
        if self.world_size > 1:
            t = t.clone()
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value`` (any picklable object) on every process."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check(self, assigner: Any) -> None:
        """One-line error for an assigner mode this topology cannot honour."""
        if len(self.streams) > 1 and assigner_distributed(assigner) == "global":
            raise ValueError(
                "trainer.emulate_ranks pairs each rank's slice on its own (distributed: local); "
                "set assigner.params.distributed=local or launch real processes for 'global'."
            )

    def record(self) -> dict[str, int]:
        """What ``config.json`` records about the topology."""
        return {
            "world_size": self.world_size,
            "emulated_ranks": len(self.streams) if self.world_size == 1 else 1,
            "per_rank_batch": self.per_rank_batch,
            "global_batch": self.global_batch,
        }

    def describe(self) -> str:
        """For the start-up line: per-rank batch, ranks and the effective (global) batch."""
        how = f"{self.world_size} processes" if self.world_size > 1 else f"{len(self.streams)} emulated"
        if self.ranks == 1:
            return f"batch={self.per_rank_batch} (effective {self.global_batch})"
        return (
            f"batch={self.per_rank_batch}/rank x {self.ranks} ranks ({how}) (effective {self.global_batch})"
        )


def make_topology(tr: Any, device: torch.device) -> Topology:
    """The topology for trainer config ``tr``; starts accelerate's process group when launched with > 1.

    ``device`` is the single-process device (``trainer.device``); with several processes each uses
    accelerate's device for its local rank (cuda:LOCAL_RANK, or the CPU with the gloo backend).
    """
    batch = int(tr.batch_size)
    emulate = int(tr.get("emulate_ranks") or 1)
    if emulate < 1:
        raise ValueError(f"trainer.emulate_ranks must be >= 1, got {emulate}.")
    world = launched_world_size()
    if world == 1:
        return Topology(device, 0, 1, tuple(range(emulate)), batch)
    if emulate > 1:
        raise ValueError(
            f"trainer.emulate_ranks={emulate} plays several ranks in one process; it cannot be combined "
            f"with {world} launched processes (set it to 1)."
        )
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    # Evaluation on the main process can take minutes while the others wait at a barrier.
    pg = InitProcessGroupKwargs(timeout=timedelta(hours=2))
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision="no", kwargs_handlers=[pg])
    rank = acc.process_index
    # gloo ranks report "cpu:<rank>"; the CPU has one device, name it plainly
    dev = torch.device("cpu") if acc.device.type == "cpu" else acc.device
    return Topology(dev, rank, acc.num_processes, (rank,), batch, acc)
