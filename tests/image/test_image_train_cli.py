"""End-to-end: the real CLIs train a few steps, log FID/KID, sample; resume is exact; flow works."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from image_helpers import compose_cfg, last_ckpt
from PIL import Image
from safetensors.torch import load_file

from immiscible_policy.image.diffusion import load_image_diffusion
from immiscible_policy.image.train import train_image


def have_fid() -> str | None:
    """Why the real FID cannot run here, or None when it can (module + Inception weights present)."""
    if importlib.util.find_spec("immiscible_policy.metrics.fid") is None:
        return "immiscible_policy.metrics.fid is not built yet"
    try:
        from immiscible_policy.metrics.inception import resolve_weights

        resolve_weights(None)
    except Exception as err:  # the FID module's own one-line error says how to install the weights
        return f"Inception weights unavailable: {err}"
    return None


def cli(mod: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    code = f"import sys; from immiscible_policy.cli.{mod} import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=dict(os.environ), timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{mod} {args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def test_train_knn_logs_fid_and_sample_cli(tmp_path, small_task):
    run = tmp_path / "run"
    no_fid = have_fid()
    fid = (
        ["trainer.fid.enabled=false"]
        if no_fid
        else [
            "trainer.fid.enabled=true",
            "trainer.fid.n_samples=4",
            "trainer.fid.n_real=6",
            "trainer.fid.kid_subset_size=4",
            "trainer.fid.kid_subsets=10",
            f"trainer.fid.cache_dir={tmp_path / 'fid'}",
        ]
    )
    cli(
        "train",
        *small_task,
        "assigner=knn",
        "trainer.max_steps=4",
        "trainer.log_every_steps=2",
        "trainer.checkpoint_every_steps=2",
        f"run_dir={run}",
        *fid,
    )
    files = {p.name for p in last_ckpt(run).iterdir()}
    assert {"model.safetensors", "ema.safetensors", "config.json", "training_state.pt"} <= files
    cfg = json.loads((last_ckpt(run) / "config.json").read_text())
    assert cfg["assigner"]["name"] == "knn" and cfg["step"] == 4 and cfg["image"]["image_size"] == 16
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4] and "loss_t9" in log[-1] and "noise_norm_ratio" in log[-1]
    grid = Image.open(run / "samples" / "step_00000004.png")
    assert grid.size == (4 * 17 + 1, 4 * 17 + 1)  # 16 images of 16x16 in a 4x4 grid with 1-px gaps
    assert (run / "curves.png").stat().st_size > 1000
    if no_fid:
        pytest.skip(f"FID/KID assertion skipped: {no_fid}")  # everything above was checked
    assert (
        log[-1]["fid"] > 0 and "kid" in log[-1] and log[-1]["fid_n_fake"] == 4 and log[-1]["fid_n_real"] == 6
    )

    out = tmp_path / "grid.png"
    p = cli("sample", f"checkpoint={run}", "n=5", "steps=2", f"output={out}", f"npz={tmp_path / 's.npz'}")
    assert "5 samples (ddim, 2 steps)" in p.stdout and Image.open(out).size == (3 * 17 + 1, 2 * 17 + 1)
    import numpy as np

    assert np.load(tmp_path / "s.npz")["images"].shape == (5, 16, 16, 1)


@pytest.mark.slow  # 27 s; tests/test_bad_inputs_checkpoint.py and test_config_check.py cover these errors fast
def test_sample_cli_and_train_errors_are_one_line(tmp_path):
    p = cli("sample", "checkpoint=/nonexistent/run", check=False)
    assert (
        p.returncode == 2
        and p.stderr.strip().startswith("error:")
        and len(p.stderr.strip().splitlines()) == 1
    )
    p = cli("sample", "checkpont=x", check=False)
    assert "unknown option(s) checkpont" in p.stderr
    p = cli(
        "train",
        "task=image_folder",
        f"task.path={tmp_path / 'none'}",
        f"run_dir={tmp_path / 'r'}",
        check=False,
    )
    assert p.returncode == 2 and "does not exist" in p.stderr and "Traceback" not in p.stderr


def test_resume_equals_uninterrupted(tmp_path, small_task):
    common = [*small_task, "assigner=knn", "trainer.max_steps=4", "trainer.checkpoint_every_steps=0"]
    common += ["trainer.sample_every_steps=0", "trainer.log_every_steps=1", "trainer.lr_scheduler=cosine"]
    train_image(compose_cfg([*common, f"run_dir={tmp_path / 'full'}"]), tmp_path / "full")
    cut = [*common, f"run_dir={tmp_path / 'cut'}"]
    train_image(compose_cfg([*cut, "trainer.max_steps_this_run=3"]), tmp_path / "cut")
    assert json.loads((last_ckpt(tmp_path / "cut") / "config.json").read_text())["step"] == 3
    train_image(compose_cfg([*cut, "resume=true"]), tmp_path / "cut")
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(last_ckpt(tmp_path / "full") / name), load_file(last_ckpt(tmp_path / "cut") / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{name}:{k}")
    steps = [json.loads(x)["step"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_rectified_flow_with_scale_decodes(tmp_path, small_task):
    run = tmp_path / "flow"
    over = [*small_task, "assigner=scale", "trainer.objective=flow", "trainer.max_steps=2", f"run_dir={run}"]
    rec = train_image(compose_cfg(over), run)
    assert rec["step"] == 2 and rec["train_loss"] > 0
    diffusion, cfg, ck = load_image_diffusion(run, device="cpu")
    core = diffusion.core
    assert core.objective == "flow" and ck.config["assigner"]["name"] == "scale"
    x = diffusion.sample(3, 2, "euler", seed=0)
    assert x.shape == (3, 1, 16, 16) and torch.isfinite(x).all() and x.abs().max() <= 1
    with pytest.raises(ValueError, match="does not fit objective 'flow'"):
        train_image(compose_cfg([*over, "trainer.sampler=ddim"]), tmp_path / "bad")
