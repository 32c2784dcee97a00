"""The trainers' shared set-up (training_run / TrainingRun) and the one checkpoint-then-barrier helper."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

from immiscible_policy.parallel import Topology
from immiscible_policy.training import TrainingRun, make_optimization, save_then_barrier


class RecordingTopology(Topology):
    """A one-process topology that plays rank ``rank`` and records its barriers."""

    def __init__(self, rank: int, events: list[str]):
        super().__init__(torch.device("cpu"), rank, 2, (rank,), 4)
        self.events = events

    def barrier(self) -> None:
        self.events.append(f"barrier {self.rank}")


def tiny_save(tmp_path: Path) -> dict:
    from hydra import compose, initialize_config_dir

    from immiscible_policy.cli._hydra import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[])
    model = torch.nn.Linear(2, 2)
    return dict(model=model, opt=make_optimization(model, cfg.trainer, 10), config={}, epoch=1)


def test_main_writes_then_every_rank_waits(tmp_path, monkeypatch):
    events: list[str] = []
    import immiscible_policy.training.state as training

    real = training.save_training

    def save_training(run_dir, step, **kw):
        events.append(f"save {step}")
        return real(run_dir, step, **kw)

    monkeypatch.setattr(training, "save_training", save_training)
    save = tiny_save(tmp_path)
    worker = save_then_barrier(RecordingTopology(1, events), tmp_path, 3, **save)
    main = save_then_barrier(RecordingTopology(0, events), tmp_path, 3, **save)
    assert events == ["barrier 1", "save 3", "barrier 0"]  # a worker only waits; the main one writes first
    assert worker is None and main == tmp_path / "checkpoints" / "00000003" and main.is_dir()


@pytest.mark.parametrize("module", ["immiscible_policy.policy.train", "immiscible_policy.image.train"])
def test_trainers_checkpoint_only_through_the_helper(module):
    """No trainer calls a barrier or writes a checkpoint itself: ``run.checkpoint`` (save_then_barrier) is
    the one place, so the main process's save and the other ranks' wait cannot be edited apart."""
    import importlib

    tree = ast.parse(inspect.getsource(importlib.import_module(module)))
    called = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    assert not called & {"barrier", "save_training", "save_checkpoint", "save_then_barrier"}
    assert "checkpoint" in called and "training_run" in called and "prepare" in called


def test_check_batch_names_the_global_batch():
    run = TrainingRun(
        cfg=None, run_dir=Path("."), topo=Topology(torch.device("cpu"), 0, 1, (0, 1), 8), restore=False
    )
    run.check_batch(16, "windows")
    with pytest.raises(
        ValueError, match=r"^trainer.batch_size=8 x 2 ranks = 16 exceeds the 15 training images; "
    ):
        run.check_batch(15, "images")


def test_prepare_wraps_the_training_forward_and_optimises_the_model(tmp_path):
    """DDP synchronises the gradients of the module whose forward it runs, so ``topo.wrap`` gets
    ``forward`` (a policy owning the network); the optimiser and EMA hold the network itself (the
    checkpoints' keys), and a ``forward`` with other parameters than the network's is refused."""
    from hydra import compose, initialize_config_dir

    from immiscible_policy import create
    from immiscible_policy.cli._hydra import config_dir

    wrapped: list[torch.nn.Module] = []

    class WrapRecording(Topology):
        def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
            wrapped.append(model)
            return model

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={tmp_path}"])
    net = torch.nn.Linear(2, 2)
    owner = torch.nn.Sequential(net)  # the network is its only submodule, as in DiffusionPolicy
    run = TrainingRun(cfg, tmp_path, WrapRecording(torch.device("cpu"), 0, 1, (0,), 4), restore=False)
    train_forward, epoch, step = run.prepare(
        net, create("vanilla"), forward=owner, total_steps=10, steps_per_epoch=1
    )
    run.close()
    assert len(wrapped) == 1 and wrapped[0] is owner and train_forward is owner and (epoch, step) == (0, 0)
    optimised = [p for group in run.opt.optimizer.param_groups for p in group["params"]]
    assert [id(p) for p in optimised] == [id(p) for p in net.parameters()]
    assert len(run.opt.ema.shadow_params) == len(list(net.parameters()))
    with pytest.raises(ValueError, match=r"must have exactly the model's parameters"):
        run.prepare(net, create("vanilla"), forward=torch.nn.Linear(2, 2), total_steps=10, steps_per_epoch=1)
    assert len(wrapped) == 1  # refused before anything was wrapped
