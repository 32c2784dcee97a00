"""Multi-process rules (immiscible_policy.parallel) with 2 real gloo processes, and their 1-process twin.

The spawned ranks start accelerate exactly as ``torchrun`` would (RANK/WORLD_SIZE/MASTER_* in the
environment), so ``make_topology`` runs its real multi-process path.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from immiscible_policy import available, create
from immiscible_policy.assigners.distributed import pair_globally
from immiscible_policy.assigners.linear import solve_assignment
from immiscible_policy.assigners.space import pairwise_sq_dist
from immiscible_policy.noising import NoisingCore, noise_generator
from immiscible_policy.parallel import Topology, make_topology

B, SEED, STEP = 6, 3, 5
SHAPE = (B, 8, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _x0(rank: int) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + rank))


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    topo = make_topology(OmegaConf.create({"batch_size": B}), torch.device("cpu"))
    x0 = _x0(rank)
    gen = topo.generators(SEED, STEP)[0]
    noise = torch.randn(SHAPE, generator=gen)
    out = {
        "record": topo.record(),
        "streams": topo.streams,
        "x0": x0,
        "noise": noise,
        "pool_extra": torch.randn(SHAPE, generator=gen),  # what knn-pool (ratio 2) draws next
        "linear": create("linear", distributed="global").pair(x0, noise).noise,
        "generic": pair_globally(create("linear").pair, x0, noise).noise,
        "sinkhorn": (
            create("sinkhorn", distributed="global").pair(x0, noise).noise
            if "sinkhorn" in available()
            else None
        ),
        "sum": topo.sum(torch.tensor([float(rank + 1)])),
        "broadcast": topo.broadcast(f"from-{rank}"),
        "rows": topo.rows(torch.arange(4 * B), 1),
    }
    # knn-pool: the pool extension must come from the same stream position as recorded above
    g2 = topo.generators(SEED, STEP)[0]
    n2 = torch.randn(SHAPE, generator=g2)
    out["knn_pool"] = create("knn-pool", distributed="global").pair(x0, n2, generator=g2).noise
    torch.save(out, f"{out_dir}/rank{rank}.pt")
    topo.barrier()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    return [torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(2)]


def test_topology_and_collectives(two_ranks):
    r0, r1 = two_ranks
    assert r0["record"] == {"world_size": 2, "emulated_ranks": 1, "per_rank_batch": B, "global_batch": 2 * B}
    assert r0["streams"] == (0,) and r1["streams"] == (1,)
    assert r0["sum"].item() == r1["sum"].item() == 3.0  # 1 + 2
    assert r0["broadcast"] == r1["broadcast"] == "from-0"  # one run_dir for everyone: the main one's
    # global batch 1 of an order is [2B, 4B); rank r takes its B-slice
    assert r0["rows"].tolist() == list(range(2 * B, 3 * B)) and r1["rows"].tolist() == list(
        range(3 * B, 4 * B)
    )


def test_ranks_draw_distinct_noise_from_their_own_streams(two_ranks):
    r0, r1 = two_ranks
    assert not torch.allclose(r0["noise"], r1["noise"])
    for rank, r in enumerate(two_ranks):  # stream = (seed, rank, step), what an emulated run draws too
        assert torch.equal(r["noise"], torch.randn(SHAPE, generator=noise_generator(SEED, rank, STEP)))


def test_global_linear_and_generic_global_equal_single_process_optimum(two_ranks):
    gx = torch.cat([r["x0"] for r in two_ranks])
    gn = torch.cat([r["noise"] for r in two_ranks])
    want = gn[solve_assignment(pairwise_sq_dist(gx.flatten(1), gn.flatten(1)))]
    assert torch.equal(torch.cat([r["linear"] for r in two_ranks]), want)
    assert torch.equal(torch.cat([r["generic"] for r in two_ranks]), want)


def test_plugin_declaring_distributed_global_pairs_the_gathered_batch(two_ranks):
    if two_ranks[0]["sinkhorn"] is None:
        pytest.skip("the example plugin immiscible-sinkhorn is not installed")
    gx = torch.cat([r["x0"] for r in two_ranks])
    gn = torch.cat([r["noise"] for r in two_ranks])
    want = create("sinkhorn").pair(gx, gn).noise  # one process on the gathered batch
    assert torch.equal(torch.cat([r["sinkhorn"] for r in two_ranks]), want)


@pytest.mark.parametrize("name", ["linear", "knn-pool", "sinkhorn"])
def test_distributed_option_is_checked(name):
    if name not in available():
        pytest.skip(f"{name} not installed")
    with pytest.raises(ValueError, match="distributed must be 'local' or 'global', got 'both'"):
        create(name, distributed="both")


def test_global_knn_pool_equals_single_process_matching_on_gathered_pool(two_ranks):
    a = create("knn-pool", distributed="global")
    gx = torch.cat([r["x0"] for r in two_ranks])
    pool = torch.cat([*(r["noise"] for r in two_ranks), *(r["pool_extra"] for r in two_ranks)])
    want = pool[a.match(gx, pool)]
    got = torch.cat([r["knn_pool"] for r in two_ranks])
    assert torch.equal(got, want)
    # conflict-free across ranks: no pool noise is used twice in the global batch
    assert torch.unique(got.flatten(1), dim=0).shape[0] == 2 * B


def test_emulated_topology_plays_every_rank():
    topo = Topology(torch.device("cpu"), 0, 1, (0, 1), 4)
    assert topo.global_batch == topo.local_batch == 8 and topo.ranks == 2
    assert topo.rows(torch.arange(32), 2).tolist() == list(range(16, 24))
    g = topo.generators(SEED, STEP)
    assert [torch.randn(3, generator=x).tolist() for x in g] == [
        torch.randn(3, generator=noise_generator(SEED, r, STEP)).tolist() for r in (0, 1)
    ]
    assert "effective 8" in topo.describe()
    with pytest.raises(ValueError, match="distributed=local"):
        topo.check(create("linear", distributed="global"))
    topo.check(create("linear", distributed="local"))


@pytest.mark.parametrize("name", ["vanilla", "knn", "linear", "knn-pool"])
def test_sharded_training_pair_is_each_rank_pairing_its_slice(name):
    from diffusers import DDPMScheduler

    core = NoisingCore(DDPMScheduler(num_train_timesteps=100), create(name))
    x0 = torch.randn(2 * B, 8, 2, generator=torch.Generator().manual_seed(0))
    gens = [noise_generator(SEED, r, STEP) for r in (0, 1)]
    tp = core.sharded_training_pair(x0, gens)
    parts = [core.training_pair(x0[r * B : (r + 1) * B], noise_generator(SEED, r, STEP)) for r in (0, 1)]
    for field in ("x_t", "timesteps", "target", "noise"):
        assert torch.equal(getattr(tp, field), torch.cat([getattr(p, field) for p in parts])), field
    assert tp.info["assign_ms"] > 0  # summed over the slices (host time of both pair calls)
    with pytest.raises(ValueError, match="equal rank slices"):
        core.sharded_training_pair(x0[:-1], gens)


def test_emulate_ranks_cannot_combine_with_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="emulate_ranks=2"):
        make_topology(OmegaConf.create({"batch_size": 4, "emulate_ranks": 2}), torch.device("cpu"))


def test_config_record_and_resume_warning_name_the_topology(tmp_path, capsys):
    from immiscible_policy.training import make_optimization, restore_training, run_record, save_training

    cpu = torch.device("cpu")
    two = Topology(cpu, 0, 1, (0, 1), 4).record()
    rec = run_record(
        OmegaConf.create({"a": 1}),
        create("knn-pool", distributed="local"),
        batch=4,
        steps_per_epoch=3,
        topology=two,
    )
    assert rec["assigner_scope"] == "batch" and rec["assigner_distributed"] == "local"
    assert (rec["world_size"], rec["emulated_ranks"], rec["per_rank_batch"], rec["global_batch"]) == (
        1,
        2,
        4,
        8,
    )
    assert (
        run_record(OmegaConf.create({}), create("knn"), batch=4, steps_per_epoch=3)["assigner_distributed"]
        is None
    )

    model = torch.nn.Linear(2, 2)
    tr = OmegaConf.create(
        {
            "lr": 1e-3,
            "betas": [0.9, 0.999],
            "weight_decay": 0.0,
            "lr_scheduler": "constant",
            "warmup_steps": 0,
            "ema_power": 0.75,
        }
    )
    opt = make_optimization(model, tr, 10)
    save_training(tmp_path, 1, model=model, opt=opt, config=rec, epoch=0)
    capsys.readouterr()
    restore_training(tmp_path, model, opt, batch=4, topology=two)
    assert "warning" not in capsys.readouterr().out
    restore_training(tmp_path, model, opt, batch=4, topology=Topology(cpu, 0, 1, (0,), 4).record())
    out = capsys.readouterr().out
    assert "warning: resuming with topology" in out and "'emulated_ranks': 2" in out
