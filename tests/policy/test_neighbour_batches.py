"""Neighbour batches (``trainer.neighbour_batches``): the neighbour table against brute force, the epoch
order's groups, pairing exactly within the groups while the leak diagnostic keeps the observation, one-line
errors, and an exact resume through the real policy trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.optimize import linear_sum_assignment

from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.config_check import check_config
from immiscible_policy.noising import NoisingCore, build_scheduler
from immiscible_policy.pairing_schedule import PairingSchedule
from immiscible_policy.policy.neighbour_batches import NeighbourOrder, group_labels, neighbour_table
from immiscible_policy.registry import create
from immiscible_policy.training import epoch_order


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_table_is_the_nearest_windows_of_other_demos():
    g = torch.Generator().manual_seed(0)
    cond, episode = torch.randn(300, 6, generator=g), torch.randint(0, 12, (300,), generator=g)
    table = neighbour_table(cond, episode, 5, chunk=64)  # several chunks
    assert table.shape == (300, 4)
    d = torch.cdist(cond, cond)
    for i in range(300):
        other = (episode != episode[i]).nonzero().flatten()
        best = d[i, other].sort().values[:4]
        assert torch.allclose(d[i, table[i]], best), i  # nearest first, none of its own demo
        assert (episode[table[i]] != episode[i]).all()


def test_table_refuses_k_below_two_and_too_few_other_windows():
    cond, episode = torch.randn(10, 3), torch.tensor([0] * 8 + [1] * 2)
    with pytest.raises(ValueError, match="use k >= 2"):
        neighbour_table(cond, episode, 1)
    with pytest.raises(
        ValueError, match="the largest demo leaves 2. Use a smaller trainer.neighbour_batches"
    ):
        neighbour_table(cond, episode, 4)


def test_order_is_plain_before_the_start_then_anchor_and_neighbour_groups():
    n, k = 103, 4
    table = neighbour_table(torch.randn(n, 3), torch.arange(n) % 9, k)
    order = NeighbourOrder(table, start_epoch=2)
    assert torch.equal(order(n, 5, 1), epoch_order(n, 5, 1))  # the warm-up: bit-identical to vanilla
    grouped = order(n, 5, 3)
    assert grouped.shape == (n // k * k,)
    anchors = epoch_order(n, 5, 3)[: n // k]  # distinct, drawn from (seed, epoch)
    groups = grouped.view(-1, k)
    assert torch.equal(groups[:, 0], anchors) and torch.equal(groups[:, 1:], table[anchors])
    assert torch.equal(order(n, 5, 3), grouped) and not torch.equal(order(n, 6, 3), grouped)
    with pytest.raises(ValueError, match="the table has 103 rows, the data 50"):
        order(50, 5, 3)


def test_c2ot_pairs_exactly_within_each_group_and_the_leak_keeps_the_observation():
    sched = build_scheduler("flow", num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    core = NoisingCore(sched, create("c2ot", standardize=False), PairingSchedule())
    g = torch.Generator().manual_seed(1)
    x0, obs = torch.randn(32, 8, 2, generator=g), torch.randn(32, 40, generator=g)
    labels = group_labels(32, 8)
    tp = core.training_pair(x0, torch.Generator().manual_seed(2), cond=obs, groups=labels)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))  # the step's own draw
    assert tp.cond is obs  # what condition_leak regresses on: the observation, not the labels
    for grp in range(4):
        rows = slice(8 * grp, 8 * grp + 8)
        cost = torch.cdist(x0[rows].flatten(1), noise[rows].flatten(1)).double().numpy()
        _, best = linear_sum_assignment(cost)  # the optimum within the group
        assert torch.equal(tp.noise[rows], noise[rows][torch.as_tensor(best)])


def test_bad_neighbour_batches_are_one_line_errors():
    with pytest.raises(ValueError, match=r"trainer.neighbour_batches=6 must divide trainer.batch_size=256"):
        check_config(cfg_of("task=pusht", "trainer.neighbour_batches=6"))
    with pytest.raises(ValueError, match="observes images; use trainer.neighbour_batches=1"):
        check_config(cfg_of("task=pusht_image", "model=unet1d_image_cpu", "trainer.neighbour_batches=8"))
    with pytest.raises(ValueError, match="neighbour_batches"):
        check_config(cfg_of("task=pusht", "trainer.neighbour_batches=0"))


TINY = [
    "model=unet1d_sweep",
    "task.dataset_path=embedded",
    "trainer.batch_size=32",
    "trainer.max_steps_per_epoch=2",
    "trainer.warmup_steps=1",
    "trainer.epochs=3",
    "trainer.eval_every_epochs=0",
    "trainer.eval_at_end=false",
    "trainer.checkpoint_every_epochs=1",
    "trainer.progress=false",
    "task.max_train_episodes=6",
    "assigner=c2ot",
    "assigner.start_epoch=1",
    "trainer.neighbour_batches=4",
]


def test_policy_trainer_trains_on_neighbour_batches_and_resumes_exactly(tmp_path, capsys):
    from safetensors.torch import load_file

    from immiscible_policy.policy.train import train_policy

    full, cut = tmp_path / "full", tmp_path / "cut"
    train_policy(cfg_of(*TINY, f"run_dir={full}"), full)
    assert "neighbour batches: groups of 4" in capsys.readouterr().out
    train_policy(cfg_of(*TINY, f"run_dir={cut}", "trainer.max_epochs_this_run=2"), cut)
    train_policy(cfg_of(*TINY, f"run_dir={cut}", "resume=true"), cut)
    recs = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in recs] == [r["train_loss"] for r in resumed]
    assert all("condition_leak" in r for r in recs)
    plain = tmp_path / "plain"  # the same run on random batches differs after the start only
    train_policy(cfg_of(*TINY, f"run_dir={plain}", "trainer.neighbour_batches=1"), plain)
    other = [json.loads(x) for x in (plain / "metrics.jsonl").read_text().splitlines()]
    assert other[0]["train_loss"] == recs[0]["train_loss"] and other[2]["train_loss"] != recs[2]["train_loss"]
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(full / "checkpoints" / "last" / name), load_file(cut / "checkpoints" / "last" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert Path(full / "checkpoints" / "last" / "config.json").exists()
