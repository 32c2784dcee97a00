"""The one fit loop's protocol, on a toy trainer (a small denoiser with dropout on 48 random 3-d points):
a checkpoint is on disk before the evaluation it precedes and the record is logged after it; a failed
evaluation is replayed first on resume and the run ends as if uninterrupted; a record owed without an
evaluation is logged on resume; ``max_{epochs,steps}_this_run`` stops (with a checkpoint off the cadence)
and the pieces resume to the uninterrupted run's losses and weights, with and without ``pair_ahead``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file
from torch import nn

from immiscible_policy.checkpoint import find_latest
from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.ema import ema_module
from immiscible_policy.fit import Due, Trainer, every, fit
from immiscible_policy.noising import build_core
from immiscible_policy.training import training_run

N, D, BATCH = 48, 3, 8  # 6 steps per epoch
POINTS = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
TIMING = ("train_min", "wall_min", "assign_ms", "eval_seconds")


class Crash(RuntimeError):
    """What the toy raises where a test makes it fail (a crashing renderer, a killed process)."""


class Toy(nn.Module):
    """(x_t (B, D), t (B,)) -> (B, D); the dropout makes an exact resume depend on the restored global RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D + 1, 16), nn.Dropout(0.3), nn.Linear(16, D))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.float()[:, None] / 1000], 1))


def toy(
    run_dir: Path,
    unit: str,
    total: int,
    *overrides: str,
    checkpoint_every: int = 1,
    eval_every: int = 0,
    crash: tuple[str, int] | None = None,
    events: list | None = None,
) -> dict:
    """Train the toy with :func:`fit` in ``unit``s (``epoch``: the policy config, ``step``: an image
    config) for a budget of ``total``; ``crash=(what, step)`` raises in the evaluation (``evaluate``)
    or right after the checkpoint is written (``checkpoint``) at that step. ``events`` receives
    (what, step, what was on disk) in the order the loop called the toy."""
    events = [] if events is None else events
    budget = f"trainer.epochs={total}" if unit == "epoch" else f"trainer.max_steps={total}"
    task = [] if unit == "epoch" else ["task=digits"]
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *task,
                "assigner=linear",
                "assigner.fraction=0.5",  # a random subset of each batch is paired: drawn per step
                budget,
                f"trainer.batch_size={BATCH}",
                "trainer.warmup_steps=1",
                "trainer.progress=false",
                f"run_dir={run_dir}",
                *overrides,
            ],
        )
    with training_run(cfg, run_dir, "policy" if unit == "epoch" else "image") as run:
        model, core = Toy(), build_core(cfg.trainer, cfg.assigner)
        spe = N // run.topo.global_batch
        total_steps = total * spe if unit == "epoch" else total
        train_model, epoch, step = run.prepare(
            model, core.assigner, total_steps=total_steps, steps_per_epoch=spe
        )

        def on_disk(step: int) -> tuple[int | None, dict | None, list[int]]:
            """The newest checkpoint's step and pending entry, and the logged steps."""
            latest = find_latest(run_dir)
            saved = json.loads((latest / "config.json").read_text()) if latest else {}
            return saved.get("step"), saved.get("pending"), [r["step"] for r in run.logger.records]

        def loss(tp):
            per_sample = ((train_model(tp.x_t, tp.model_timesteps) - tp.target) ** 2).mean(1)
            return per_sample.mean(), per_sample, tp

        def checkpoint(step: int, epoch: int, pending: dict) -> None:
            run.checkpoint(model, step, epoch=epoch, pending=pending)
            events.append(("checkpoint", step, None))
            if crash == ("checkpoint", step):
                raise Crash(f"killed after the checkpoint of step {step}")

        def evaluate(record: dict, due: Due) -> dict:
            step = int(record["step"])
            events.append(("evaluate", step, on_disk(step)))
            if crash == ("evaluate", step):
                raise Crash(f"evaluation of step {step} failed")
            record["score"] = float(
                sum(p.double().sum() for p in ema_module(run.opt.ema, model).parameters())
            )
            return {}

        trainer = Trainer(
            unit=unit,
            total=total,
            rows=N,
            steps_per_epoch=spe,
            core=core,
            model=model,
            prepare=lambda rows, gens: core.sharded_training_pair(POINTS[rows], gens),
            loss=loss,
            due=lambda at: Due(
                log=True, checkpoint=every(at, checkpoint_every), evaluate=every(at, eval_every)
            ),
            checkpoint=checkpoint,
            evaluate=evaluate,
            report=lambda record, due: events.append(("log", int(record["step"]), None)),
        )
        return fit(run, trainer, at=epoch if unit == "epoch" else step, step=step)


def records(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_weights(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = (load_file(r / "checkpoints" / "last" / name) for r in (a, b))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), f"{name}:{k}"


def test_the_checkpoint_is_written_before_the_evaluation_and_the_log_after_it(tmp_path):
    events: list = []
    toy(tmp_path / "run", "epoch", 4, checkpoint_every=2, eval_every=1, events=events)
    steps = [(what, step) for what, step, _ in events]
    assert steps == [
        ("evaluate", 6),  # epoch 1: evaluated without a checkpoint (not on its cadence)
        ("log", 6),
        ("checkpoint", 12),
        ("evaluate", 12),
        ("log", 12),
        ("evaluate", 18),
        ("log", 18),
        ("checkpoint", 24),
        ("evaluate", 24),
        ("log", 24),
    ]
    seen = {step: disk for what, step, disk in events if what == "evaluate"}
    # while step 12 is evaluated its checkpoint is on disk, owing the record and the evaluation, and
    # the log does not have it yet
    ck_step, pending, logged = seen[12]
    assert ck_step == 12 and pending["evaluate"] is True and pending["record"]["step"] == 12
    assert logged == [6]
    assert seen[18][0] == 12 and seen[18][2] == [6, 12]
    assert [r["epoch"] for r in records(tmp_path / "run")] == [1, 2, 3, 4]


def test_a_failed_evaluation_is_replayed_first_and_the_run_ends_as_if_uninterrupted(tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    toy(full, "epoch", 3, eval_every=1)
    with pytest.raises(Crash, match="evaluation of step 12 failed"):
        toy(cut, "epoch", 3, eval_every=1, crash=("evaluate", 12))
    saved = json.loads((find_latest(cut) / "config.json").read_text())
    assert saved["step"] == 12 and saved["pending"]["evaluate"] is True
    assert [r["step"] for r in records(cut)] == [6]
    capsys.readouterr()

    events: list = []
    toy(cut, "epoch", 3, "resume=true", eval_every=1, events=events)
    out = capsys.readouterr().out
    assert "[immiscible] evaluating epoch 2 (its checkpoint was saved, its evaluation was not)" in out
    # the owed evaluation comes before any training; the estimate counts it with epoch 3's
    assert [(what, step) for what, step, _ in events][:2] == [("evaluate", 12), ("log", 12)]
    assert re.search(r"\[immiscible\] estimate: 6 steps/epoch x 1 epochs .* \+ 2 evaluations", out), out
    assert records(cut) == records(full)  # the same losses, and the same EMA weights scored
    assert_same_weights(full, cut)


def test_a_record_owed_without_an_evaluation_is_logged_on_resume(tmp_path, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    toy(full, "step", 9, "trainer.log_every_steps=1", checkpoint_every=4, eval_every=3)
    with pytest.raises(Crash, match="killed after the checkpoint of step 4"):
        toy(
            cut,
            "step",
            9,
            "trainer.log_every_steps=1",
            checkpoint_every=4,
            eval_every=3,
            crash=("checkpoint", 4),
        )
    assert [r["step"] for r in records(cut)] == [1, 2, 3]
    capsys.readouterr()
    events: list = []
    toy(
        cut,
        "step",
        9,
        "trainer.log_every_steps=1",
        "resume=true",
        checkpoint_every=4,
        eval_every=3,
        events=events,
    )
    assert "evaluating" not in capsys.readouterr().out  # nothing was due at step 4 but its record
    assert events[0][:2] == ("log", 4)
    assert records(cut) == records(full)
    assert [r["step"] for r in records(cut)] == list(range(1, 10))
    assert_same_weights(full, cut)


@pytest.mark.parametrize(
    "unit, total, this_run, stops",
    [("epoch", 3, 2, [2, 3]), ("step", 10, 4, [4, 8, 10])],  # steps: 6 per epoch, pieces cut mid-epoch
)
@pytest.mark.parametrize("pair_ahead", [False, True])
def test_max_this_run_stops_with_a_checkpoint_and_the_pieces_resume_exactly(
    tmp_path, unit, total, this_run, stops, pair_ahead
):
    full, cut = tmp_path / "full", tmp_path / "cut"
    cadence = ["trainer.log_every_steps=1"] if unit == "step" else []
    toy(full, unit, total, *cadence, checkpoint_every=0, eval_every=2)
    ahead = f"trainer.pair_ahead={str(pair_ahead).lower()}"
    for i, stop in enumerate(stops):
        resume = ["resume=true"] if i else []
        last = toy(
            cut,
            unit,
            total,
            *cadence,
            *resume,
            ahead,
            f"trainer.max_{unit}s_this_run={this_run}",
            checkpoint_every=0,
            eval_every=2,
        )
        assert last[unit] == stop  # stopped there, and checkpointed there though no cadence asked
        saved = json.loads((find_latest(cut) / "config.json").read_text())
        assert saved[unit] == stop
    assert records(cut) == records(full)
    assert list(records(cut)[0])[:2] == ([unit, "step"] if unit == "epoch" else ["step", "epoch"])
    assert_same_weights(full, cut)
