"""2-process gloo test: global linear assignment equals the single-process optimum on the gathered batch."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from immiscible_policy import create
from immiscible_policy.assigners.linear import solve_assignment
from immiscible_policy.assigners.space import pairwise_sq_dist
from immiscible_policy.noising import noise_generator

B = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x0 = torch.randn(B, 8, 2, generator=torch.Generator().manual_seed(100 + rank))
        noise = torch.randn(B, 8, 2, generator=noise_generator(seed=7, rank=rank, step=0))
        paired = create("linear", distributed="global").pair(x0, noise).noise
        local = create("linear", distributed="local").pair(x0, noise).noise
        torch.save({"x0": x0, "noise": noise, "paired": paired, "local": local}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_global_linear_two_ranks(tmp_path):
    mp.start_processes(
        _worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="spawn"
    )
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]
    # ranks drew different noise from their own streams
    assert not torch.equal(r[0]["noise"], r[1]["noise"])
    gx = torch.cat([r[0]["x0"], r[1]["x0"]])
    gn = torch.cat([r[0]["noise"], r[1]["noise"]])
    gp = torch.cat([r[0]["paired"], r[1]["paired"]])
    # every gathered noise row is used exactly once across ranks (distinct slices)
    match = (gp.flatten(1)[:, None] == gn.flatten(1)[None]).all(-1)
    assert match.sum(0).eq(1).all() and match.sum(1).eq(1).all()
    # and the global pairing is the optimum of the gathered batch
    perm = solve_assignment(pairwise_sq_dist(gx.flatten(1), gn.flatten(1)))
    assert torch.equal(gp, gn[perm])
    # local pairing keeps each rank's own noise
    for i in range(2):
        lm = (r[i]["local"].flatten(1)[:, None] == r[i]["noise"].flatten(1)[None]).all(-1)
        assert lm.sum(0).eq(1).all()
