"""Every bad config value is one actionable line naming the key, raised before any data is loaded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.config_check import check_config
from immiscible_policy.config_schema import SCHEMAS, rules_of

CONFIGS = Path(config_dir())


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.batch_size=-1"], r"^trainer\.batch_size=-1 is out of range; use an integer >= 1"),
        (["trainer.batch_size=0"], r"^trainer\.batch_size=0 is out of range"),
        (
            ["trainer.epochs=0"],
            r"^trainer\.epochs=0 is out of range; use an integer >= 1, e\.g\. trainer\.epochs=",
        ),
        (["trainer.epochs=2.5"], r"^trainer\.epochs=2\.5 is not an integer"),
        (["trainer.lr=abc"], r"^trainer\.lr=abc is not a number; use a number > 0, e\.g\. trainer\.lr="),
        (["trainer.lr=0"], r"^trainer\.lr=0 is out of range; use a number > 0"),
        (
            ["trainer.keep_last=0"],
            r"^trainer\.keep_last=0 is out of range; use an integer >= 1 \(null = keep",
        ),
        (
            ["trainer.eval_every_epochs=-1"],
            r"^trainer\.eval_every_epochs=-1 is out of range; use an integer >= 0",
        ),
        (["trainer.checkpoint_every_epochs=-2"], r"^trainer\.checkpoint_every_epochs=-2 is out of range"),
        (["trainer.num_inference_steps=0"], r"^trainer\.num_inference_steps=0 is out of range"),
        (["trainer.max_steps_per_epoch=0"], r"^trainer\.max_steps_per_epoch=0 is out of range.*null = every"),
        (["trainer.warmup_steps=-1"], r"^trainer\.warmup_steps=-1 is out of range"),
        (["trainer.betas=[0.9]"], r"^trainer\.betas=\[0\.9\] is not two numbers in \[0, 1\)"),
        (["trainer.progress=yes"], r"^trainer\.progress=yes is not true/false; use true or false"),
        (
            ["trainer.objective=flw"],
            r"^trainer\.objective=flw is not supported \(did you mean flow\?\); use one of",
        ),
        (
            ["trainer.sampler=foo"],
            r"^trainer\.sampler=foo is not supported; use one of auto, ddim, ddpm, euler",
        ),
        (
            ["trainer.sampler=euler"],
            r"^trainer\.sampler='euler' does not fit objective 'epsilon'; use ddim or ddpm",
        ),
        (
            ["trainer.objective=flow", "trainer.sampler=ddpm"],
            r"does not fit objective 'flow'; use euler or heun",
        ),
        (
            ["trainer.lr_scheduler=cosin"],
            r"^trainer\.lr_scheduler=cosin is not supported \(did you mean cosine\?\)",
        ),
        (["trainer.beta_schedule=cos"], r"^trainer\.beta_schedule=cos is not supported"),
        (["trainer.device=gpu"], r"^trainer\.device=gpu is not a device; use auto, cpu, cuda, cuda:N or mps"),
        (["trainer.emulate_ranks=0"], r"^trainer\.emulate_ranks=0 is out of range"),
        (["trainer.grad_clip=0"], r"^trainer\.grad_clip=0 is out of range.*null = no clipping"),
        (
            ["+trainer.epoch=3"],
            r"^trainer\.epoch is not a setting of the policy trainer \(did you mean trainer\.epochs\?\)",
        ),
        (["+epochs=3"], r"^epochs is not a setting of immiscible-train \(did you mean trainer\.epochs\?\)"),
        (
            ["+model.down_dim=[8]"],
            r"^model\.down_dim is not a setting of the policy model \(did you mean model\.down_dims",
        ),
        (["model.kernel_size=0"], r"^model\.kernel_size=0 is out of range"),
        (
            ["model=unet2d_small"],
            r"^model=unet2d_small is an image model but task pusht is a policy task; use model=unet1d",
        ),
        (["task.horizon=0"], r"^task\.horizon=0 is out of range"),
        (["task.eval.n_episodes=0"], r"^task\.eval\.n_episodes=0 is out of range"),
        (
            ["task.eval.symmetric_rollouts=-1"],
            r"^task\.eval\.symmetric_rollouts=-1 is out of range; use an integer >= 0 \(0 = off\)",
        ),
        (
            ["task=robomimic_lift", "+task.eval.symmetric_rollouts=5"],
            r"^task\.eval\.symmetric_rollouts=5 needs a PushT evaluation .* task 'robomimic_lift' does not",
        ),
        (
            ["task=lerobot", "task.eval.symmetric_rollouts=5"],
            r"^task\.eval\.symmetric_rollouts=5 needs a PushT evaluation .*task\.eval_env=pusht\)",
        ),
        (["resume=maybe"], r"^resume=maybe is not supported; use false \| true \| auto"),
        (["resume_force=1"], r"^resume_force=1 is not true/false"),
        (["assigner.name=knnn"], r"Unknown assigner 'knnn'\. Did you mean 'knn'\?"),
        (["task.type=video"], r"^task\.type=video is not supported; use one of policy, image"),
    ],
)
def test_policy_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        check_config(cfg_of(*overrides))
    one_line(err)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.max_steps=0"], r"^trainer\.max_steps=0 is out of range"),
        (["trainer.sample_every_steps=-1"], r"^trainer\.sample_every_steps=-1 is out of range"),
        (["trainer.n_grid=0"], r"^trainer\.n_grid=0 is out of range"),
        (
            ["trainer.mixed_precision=fp16"],
            r"^trainer\.mixed_precision=fp16 is not supported.*; use one of auto, bf16, no",
        ),
        (
            ["trainer.sampler=heun"],
            r"^trainer\.sampler='heun' does not fit objective 'epsilon'; use ddim or ddpm",
        ),
        (
            ["+trainer.fid.nsamples=3"],
            r"^trainer\.fid\.nsamples is not a setting of the FID evaluation \(did you mean",
        ),
        (["trainer.fid.n_samples=1"], r"^trainer\.fid\.n_samples=1 is out of range; use an integer >= 2"),
        (["trainer.fid.enabled=1"], r"^trainer\.fid\.enabled=1 is not true/false"),
        (["+trainer.epochs=3"], r"^trainer\.epochs is not a setting of the image trainer"),
        (
            ["trainer=cpu_default"],
            r"^trainer is the policy trainer's config but task digits is an image task; use trainer",
        ),
        (
            ["model.block_out_channels=[8,8]"],
            r"^model\.block_out_channels, model\.down_block_types and model\.up_block",
        ),
        (["task.image_size=0"], r"^task\.image_size=0 is out of range"),
        (["assigner=c2ot"], r"pairs noise within conditions, but task 'digits' is unconditional"),
    ],
)
def test_image_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        check_config(cfg_of("task=digits", *overrides))
    one_line(err)


def test_missing_mandatory_value_names_the_key():
    with pytest.raises(ValueError, match=r"^task\.path is required \(\?\?\? in its config\); set it"):
        check_config(cfg_of("task=cifar10"))


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["assigner=knn", "trainer.objective=flow"],
        ["assigner=c2ot", "model=unet1d_sweep", "trainer.sampler=ddim", "trainer.lr=1e-4"],
        ["task=digits"],
        ["task=digits", "assigner=knn", "trainer.objective=flow", "trainer.sampler=heun"],
        ["task=digits", "assigner=c2ot", "task.class_conditional=true", "model=unet2d_tiny"],
        ["resume=auto", "resume_force=true"],
        ["task.eval.symmetric_rollouts=50"],
        ["task=lerobot", "task.eval_env=pusht", "task.eval.symmetric_rollouts=50"],
    ],
)
def test_shipped_configs_pass(overrides):
    out = check_config(cfg_of(*overrides))
    assert out["kind"] in ("policy", "image")


def _schema_of(group: str, name: str) -> type:
    """The dataclass a preset extends: the ``/schema/<x>@_here_`` in its defaults list, or that of the
    preset of the same group it extends."""
    for entry in yaml.safe_load((CONFIGS / group / f"{name}.yaml").read_text()).get("defaults", []):
        if isinstance(entry, str) and entry.endswith("@_here_"):
            return SCHEMAS[entry.removeprefix("/schema/").removesuffix("@_here_")]
        if isinstance(entry, str) and not entry.startswith(("/", "_")):
            return _schema_of(group, entry)
    raise AssertionError(f"{group}/{name}.yaml composes no /schema/...@_here_")


def _unknown_keys(values: dict, cls: type, prefix: str) -> list[str]:
    rules, out = rules_of(cls), []
    for key, value in values.items():
        if key not in rules:
            out.append(f"{prefix}{key}")
        elif rules[key].section is not None and isinstance(value, dict):
            out += _unknown_keys(value, rules[key].section, f"{prefix}{key}.")
    return out


@pytest.mark.parametrize("group", ["trainer", "model"])
def test_every_shipped_trainer_key_is_known(group):
    """A key in configs/trainer/*.yaml or configs/model/*.yaml must be a field of its schema dataclass
    (config_schema/), sections included (else it is rejected as unknown)."""
    for path in sorted((CONFIGS / group).glob("*.yaml")):
        values = yaml.safe_load(path.read_text()) or {}
        values.pop("defaults", None)
        assert not _unknown_keys(values, _schema_of(group, path.stem), f"{group}."), path.name


def test_trainers_check_before_loading_data(tmp_path):
    from immiscible_policy.image.train import train_image
    from immiscible_policy.policy.train import train_policy

    with pytest.raises(ValueError, match=r"^trainer\.batch_size=0 is out of range"):
        train_policy(cfg_of("task.dataset_path=/nonexistent.zarr", "trainer.batch_size=0"), tmp_path / "p")
    with pytest.raises(ValueError, match=r"^trainer\.keep_last=0 is out of range"):
        train_image(
            cfg_of("task=image_folder", f"task.path={tmp_path}/none", "trainer.keep_last=0"), tmp_path / "i"
        )
    assert not (tmp_path / "p").exists() and not (tmp_path / "i").exists()  # refused before the run dir


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``immiscible-train`` in this process: the errors come from its preflight, before Hydra runs."""
    from immiscible_policy.cli.train import main

    monkeypatch.setattr(sys, "argv", ["immiscible-train", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    return int(exit_.value.code), err


@pytest.mark.parametrize(
    "args, message",
    [
        (["trainer.batch_size=-1"], "error: trainer.batch_size=-1 is out of range; use an integer >= 1"),
        (["trainer.lr=abc"], "error: trainer.lr=abc is not a number; use a number > 0"),
        (
            ["+trainer.epoch=3"],
            "error: trainer.epoch is not a setting of the policy trainer (did you mean trainer.epochs?)",
        ),
        (
            ["trainer.epoch=3"],
            "error: trainer.epoch is not a setting (did you mean trainer.epochs?); correct its name",
        ),
        (["epochs=3"], "error: epochs is not a setting (did you mean trainer.epochs?)"),
        (["trainer=nope"], "error: trainer=nope: no such config in"),
        (["trainer.lr=["], "error: cannot parse 'trainer.lr=['"),
        (["trainer.sampler=foo"], "error: trainer.sampler=foo is not supported"),
    ],
)
def test_cli_prints_one_line_and_exits_2(monkeypatch, capsys, tmp_path, args, message):
    run = tmp_path / "run"
    code, err = run_cli(monkeypatch, capsys, *args, f"run_dir={run}")
    assert code == 2 and err.startswith(message), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not run.exists()  # refused before Hydra created the run directory
