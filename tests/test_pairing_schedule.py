"""The pairing schedule (start_epoch, fraction, ramp_epochs) in the noising core: vanilla before the start
and at fraction 0 bit for bit, the paired share under fraction and ramp, one-line errors, records and an
exact resume through the real policy trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.optimize import linear_sum_assignment

from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.config_check import check_config
from immiscible_policy.noising import NoisingCore, RectifiedFlow, build_scheduler, noise_generator
from immiscible_policy.pairing_schedule import PairingSchedule
from immiscible_policy.registry import create


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def core(name: str = "linear", objective: str = "epsilon", **schedule) -> NoisingCore:
    sched = build_scheduler(objective, num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    return NoisingCore(sched, create(name), PairingSchedule(**schedule))


def pairs_equal(a, b) -> None:
    for f in ("x_t", "timesteps", "model_timesteps", "target", "x0", "noise"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_share_formula():
    s = PairingSchedule(start_epoch=2, fraction=0.5, ramp_epochs=4)
    assert [s.share(e) for e in range(8)] == [0, 0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert [PairingSchedule(start_epoch=3).share(e) for e in range(5)] == [0, 0, 0, 1, 1]
    assert PairingSchedule(fraction=0.25).share(0) == 0.25
    assert PairingSchedule().always_full and not PairingSchedule(ramp_epochs=1).always_full
    assert [PairingSchedule.rows(s, 256) for s in (0.0, 0.25, 0.5, 1.0)] == [0, 64, 128, 256]


@pytest.mark.parametrize("objective", ["epsilon", "flow"])
@pytest.mark.parametrize("name", ["linear", "knn", "c2ot"])
def test_before_the_start_and_at_fraction_zero_bit_identical_to_vanilla(name, objective):
    x0, cond = torch.randn(32, 16, 2), torch.arange(32) % 2  # labels: c2ot pairs within them
    vanilla = core("vanilla", objective)
    late, none = core(name, objective, start_epoch=3), core(name, objective, fraction=0.0)
    for epoch in range(3):
        late.set_epoch(epoch)
        none.set_epoch(epoch + 10)
        ref = vanilla.training_pair(x0, noise_generator(0, 0, epoch), cond=cond)
        pairs_equal(late.training_pair(x0, noise_generator(0, 0, epoch), cond=cond), ref)
        pairs_equal(none.training_pair(x0, noise_generator(0, 0, epoch), cond=cond), ref)
        assert late.training_pair(x0, noise_generator(0, 0, 0), cond=cond).info["paired_share"] == 0.0
    late.set_epoch(3)  # from the start on: the strategy pairs, the noise changes
    after = late.training_pair(x0, noise_generator(0, 0, 3), cond=cond)
    assert after.info["paired_share"] == 1.0
    assert not torch.equal(after.noise, vanilla.training_pair(x0, noise_generator(0, 0, 3), cond=cond).noise)


def test_full_schedule_is_the_strategy_alone():
    """The default schedule draws nothing extra: exactly the assigner's pairing (runs before schedules)."""
    x0 = torch.randn(64, 16, 2)
    c = core("linear")
    tp = c.training_pair(x0, noise_generator(1, 0, 5))
    g = noise_generator(1, 0, 5)
    noise = torch.randn(x0.shape, generator=g)
    want = create("linear").pair(x0, noise, generator=g).noise
    assert torch.equal(tp.noise, want) and tp.info["paired_share"] == 1.0


def test_fraction_pairs_a_random_subset_optimally_and_leaves_the_rest():
    b, k = 64, 16
    x0 = torch.randn(b, 16, 2)
    c = core("linear", fraction=0.25)
    tp = c.training_pair(x0, noise_generator(2, 0, 0))
    assert tp.info["paired_share"] == 0.25
    # re-derive: the noise draw, then the subset from the same generator, then an optimal solve on it
    g = noise_generator(2, 0, 0)
    noise = torch.randn(x0.shape, generator=g)
    rows = torch.randperm(b, generator=g)[:k]
    rest = torch.ones(b, dtype=torch.bool)
    rest[rows] = False
    assert torch.equal(tp.noise[rest], noise[rest]) and torch.equal(tp.x0, x0)
    cost = torch.cdist(x0[rows].flatten(1).double(), noise[rows].flatten(1).double()).numpy()
    r, cols = linear_sum_assignment(cost)
    got = (x0[rows] - tp.noise[rows]).flatten(1).double().norm(dim=1).sum()
    assert float(got) == pytest.approx(cost[r, cols].sum(), rel=1e-6)
    # the paired rows' noise is a permutation of their own draws
    assert sorted(tp.noise[rows].flatten().tolist()) == sorted(noise[rows].flatten().tolist())


def test_ramp_grows_the_paired_share_per_epoch():
    c = core("linear", start_epoch=1, fraction=0.5, ramp_epochs=2)
    x0 = torch.randn(40, 8, 2)
    shares = []
    for epoch in range(5):
        c.set_epoch(epoch)
        shares.append(c.training_pair(x0, noise_generator(0, 0, epoch)).info["paired_share"])
    assert shares == [0.0, 0.25, 0.5, 0.5, 0.5]


def test_conditions_follow_their_rows_into_the_subset():
    """c2ot on a subset sees exactly the subset's conditions: labels pair only within a label."""
    x0, labels = torch.randn(48, 4, 2), torch.arange(48) % 3
    sched = RectifiedFlow()
    c = NoisingCore(sched, create("c2ot"), PairingSchedule(fraction=0.5))
    g = noise_generator(0, 0, 0)
    tp = c.training_pair(x0, g, cond=labels)
    g = noise_generator(0, 0, 0)
    noise = torch.randn(x0.shape, generator=g)
    rows = torch.randperm(48, generator=g)[:24]
    for i in rows.tolist():  # each paired row took the noise of a subset row with its own label
        j = next(j for j in rows.tolist() if torch.equal(noise[j], tp.noise[i]))
        assert labels[j] == labels[i]


@pytest.mark.parametrize(
    "override, message",
    [
        ("assigner.start_epoch=-1", r"^assigner\.start_epoch=-1: use an integer >= 0 \(epochs\)\.$"),
        ("assigner.start_epoch=2.5", r"^assigner\.start_epoch=2\.5: use an integer >= 0"),
        ("assigner.fraction=1.5", r"^assigner\.fraction=1\.5: use a number in \[0, 1\]"),
        ("assigner.fraction=-0.1", r"^assigner\.fraction=-0\.1: use a number in \[0, 1\]"),
        ("assigner.fraction=half", r"^assigner\.fraction='half': use a number in \[0, 1\]"),
        ("assigner.ramp_epochs=-3", r"^assigner\.ramp_epochs=-3: use an integer >= 0"),
        ("assigner.ramp_epochs=true", r"^assigner\.ramp_epochs=True: use an integer >= 0"),
    ],
)
def test_bad_schedule_values_are_one_line_errors(override, message):
    with pytest.raises(ValueError, match=message) as err:
        check_config(cfg_of("assigner=linear", override))
    assert "\n" not in str(err.value)


def test_schedule_refused_for_a_strategy_that_transforms_the_data():
    with pytest.raises(
        ValueError, match=r"^assigner 'scale' transforms the data .* drop assigner\.start_epoch"
    ):
        check_config(cfg_of("assigner=scale", "assigner.fraction=0.5"))
    check_config(cfg_of("assigner=scale"))  # the default schedule is fine


def test_schedule_keys_are_part_of_every_assigner_config():
    cfg = cfg_of("assigner=linear", "assigner.start_epoch=5", "assigner.fraction=0.5")
    assert (cfg.assigner.start_epoch, cfg.assigner.fraction, cfg.assigner.ramp_epochs) == (5, 0.5, 0)
    assert PairingSchedule.from_config(cfg.assigner) == PairingSchedule(5, 0.5, 0)
    assert PairingSchedule.from_config({"name": "linear", "params": {}}) == PairingSchedule()  # old runs


# ----------------------------------------------------------------------------- through the policy trainer


def pusht_or_skip() -> str:
    from immiscible_policy.policy.dataset import default_pusht_zarr

    zarr = Path(default_pusht_zarr())
    if not zarr.exists():
        pytest.skip(f"PushT demos not found at {zarr} (set IMMISCIBLE_PUSHT_ZARR)")
    return str(zarr)


TINY = [
    "model=unet1d_sweep",
    "trainer.batch_size=32",
    "trainer.max_steps_per_epoch=2",
    "trainer.warmup_steps=1",
    "trainer.epochs=3",
    "trainer.eval_every_epochs=0",
    "trainer.eval_at_end=false",
    "trainer.checkpoint_every_epochs=1",
    "trainer.progress=false",
    "task.max_train_episodes=5",
    "assigner=linear",
    "assigner.start_epoch=1",
    "assigner.fraction=0.5",
    "assigner.ramp_epochs=2",
]


def test_policy_trainer_logs_the_share_saves_it_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    from immiscible_policy.policy.train import train_policy

    common = [*TINY, f"task.dataset_path={pusht_or_skip()}"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_policy(cfg_of(*common, f"run_dir={full}"), full)
    train_policy(cfg_of(*common, f"run_dir={cut}", "trainer.max_epochs_this_run=2"), cut)
    train_policy(cfg_of(*common, f"run_dir={cut}", "resume=true"), cut)
    recs = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["paired_share"] for r in recs] == [0.0, 0.25, 0.5]
    resumed = [json.loads(x) for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["paired_share"] for r in resumed] == [0.0, 0.25, 0.5]
    assert [r["train_loss"] for r in recs] == [r["train_loss"] for r in resumed]
    ck = json.loads((full / "checkpoints" / "last" / "config.json").read_text())
    assert ck["pending"]["record"]["paired_share"] == 0.5
    assert (ck["assigner"]["start_epoch"], ck["assigner"]["fraction"], ck["assigner"]["ramp_epochs"]) == (
        1,
        0.5,
        2,
    )
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(full / "checkpoints" / "last" / name), load_file(cut / "checkpoints" / "last" / name)
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k}"
