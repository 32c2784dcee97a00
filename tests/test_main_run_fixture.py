"""A run directory written before the redesign still loads, resumes and evaluates to the same numbers.

tests/fixtures/main_runs/ holds a tiny policy run (PushT, embedded demos, flow, half-batch standardised
pairing from epoch 1) and a tiny image run (digits, epsilon, linear pairing), both written by the main
branch's ``immiscible-train`` at the commit named in expected.json, with what resuming, evaluating and
loading them gave then (tests/fixtures/make_main_runs.py). Here today's code does the same, in-process.

Tolerances: on the machine that wrote the fixture the numbers match exactly; another CPU may differ in the
last float bits (other SIMD kernels), so losses and weights compare at 1e-4 relative, and rollouts, where
those bits could move a contact, at 1e-3 on the score.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "main_runs"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
sys.path.insert(0, str(FIXTURE.parent))
import make_main_runs as maker  # noqa: E402  (the same operations and fingerprints that wrote the fixture)

sys.path.remove(str(FIXTURE.parent))


def run_cli(module: str, monkeypatch, *args: str) -> None:
    """An immiscible CLI in this process (``main()``), as :func:`maker.cli` runs it in a fresh one."""
    import importlib

    monkeypatch.setenv("IMMISCIBLE_PUSHT_ZARR", "")
    cli = importlib.import_module(f"immiscible_policy.cli.{module}")
    monkeypatch.setattr(sys, "argv", [f"immiscible-{module}", *args])
    if hasattr(cli, "_PREFLIGHT"):
        cli._PREFLIGHT.clear()
    try:
        code = cli.main(list(args)) if module != "train" else cli.main()
    except SystemExit as exc:
        code = exc.code
    assert not code, f"immiscible-{module} exited with {code}"


def close(a, b, rel=1e-4) -> bool:
    return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rel, atol=rel))


@pytest.fixture
def copy_of(tmp_path):
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(FIXTURE / name, target, symlinks=True)
        return target

    return copy


def test_policy_run_resumes_to_the_same_losses_scores_and_weights(copy_of, monkeypatch):
    run = copy_of("policy")
    args = [*maker.POLICY, f"trainer.epochs={maker.POLICY_RESUME_EPOCHS}", f"run_dir={run}", "resume=true"]
    run_cli("train", monkeypatch, *args)
    got = [
        maker._keep(r, tuple(e))
        for r, e in zip(maker.records(run), EXPECTED["policy"]["records"], strict=True)
    ]
    for g, e in zip(got, EXPECTED["policy"]["records"], strict=True):
        assert g.keys() == e.keys() and (g["epoch"], g["step"], g["paired_share"]) == (
            e["epoch"],
            e["step"],
            e["paired_share"],
        )
        assert close(g["train_loss"], e["train_loss"]), (g, e)
        assert close(g["mean_score"], e["mean_score"], rel=1e-3), (g, e)
    want = EXPECTED["policy"]["ema_after_resume"]
    got_sum = maker.checksum(run / "checkpoints" / "last" / "ema.safetensors")
    assert close([got_sum["sum"], got_sum["sumsq"]], [want["sum"], want["sumsq"]]), (got_sum, want)


def test_policy_run_evaluates_to_the_same_score_and_turns(tmp_path, monkeypatch):
    out = tmp_path / "eval"
    run_cli("eval", monkeypatch, f"checkpoint={FIXTURE / 'policy'}", *maker.EVAL, f"output_dir={out}")
    ev = json.loads((out / "metrics.json").read_text())
    want = EXPECTED["policy"]["eval"]
    assert close(ev["mean_score"], want["mean_score"], rel=1e-3)
    assert close(ev["rotation"], want["rotation"], rel=1e-3)
    assert ev["modes"]["rotation"] == want["modes"]


def test_policy_checkpoint_loads_to_the_same_actions():
    with torch.no_grad():
        assert close(maker.policy_actions(FIXTURE / "policy"), EXPECTED["policy"]["actions"])


def test_image_run_resumes_to_the_same_losses_and_weights_and_samples_the_same(
    copy_of, tmp_path, monkeypatch
):
    run = copy_of("image")
    args = [*maker.IMAGE, f"trainer.max_steps={maker.IMAGE_RESUME_STEPS}", f"run_dir={run}", "resume=true"]
    run_cli("train", monkeypatch, *args)
    for g, e in zip(maker.records(run), EXPECTED["image"]["records"], strict=True):
        assert (g["step"], g["paired_share"]) == (e["step"], e["paired_share"])
        assert close(g["train_loss"], e["train_loss"]), (g, e)
    want = EXPECTED["image"]["ema_after_resume"]
    got = maker.checksum(run / "checkpoints" / "last" / "ema.safetensors")
    assert close([got["sum"], got["sumsq"]], [want["sum"], want["sumsq"]]), (got, want)

    out = tmp_path / "samples"
    out.mkdir()
    monkeypatch.setattr(maker, "cli", lambda module, *a: run_cli(module, monkeypatch, *a))
    samples = maker.image_samples(FIXTURE / "image", out)
    # uint8 pixels: a last-bit difference can move one pixel value by one
    assert abs(samples["sum"] - EXPECTED["image"]["samples"]["sum"]) <= 4
    assert close(samples["first_row"], EXPECTED["image"]["samples"]["first_row"], rel=0) or (
        np.abs(np.subtract(samples["first_row"], EXPECTED["image"]["samples"]["first_row"])).max() <= 1
    )
