"""The noise share of a policy's action (immiscible_policy.analysis.noise_share, ``immiscible-analyze
noise_share``): the law-of-total-variance split on stand-in policies whose answer is known, and the CLI on
the small checkpoint fixture.

Why: the sweep's explanation of why full-batch pairing breaks a PushT policy rests on this number; a share
that read the wrong axis, ignored the generator, or scored a non-finite action would mislead it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_analyze_runs import _image_ckpt, _one_line_error, _policy_ckpt, needs_pusht

from immiscible_policy.analysis.noise_share import noise_share
from immiscible_policy.cli.analyze import main as analyze

OBS = torch.linspace(-3, 3, 40).reshape(40, 1, 1).repeat(1, 2, 3)  # 40 observations, 2 steps, 3 numbers


def _policy(obs_weight: float, noise_std: float):
    """Actions (n, 4, 2): obs_weight x the observation's first number, plus noise_std x the generator's noise."""

    def predict(obs: torch.Tensor, g: torch.Generator) -> np.ndarray:
        z = torch.randn(obs.shape[0], 4, 2, generator=g)
        return (obs_weight * obs[:, -1, :1, None].expand(-1, 4, 2) + noise_std * z).numpy()

    return predict


def test_an_action_set_by_the_observation_has_no_noise_share():
    res = noise_share(_policy(1.0, 0.0), OBS, samples=8)
    assert res["noise_share"] == 0.0 and res["within_obs_std"] == 0.0
    assert res["between_obs_std"] == pytest.approx(float(OBS[:, -1, 0].std()), rel=1e-6)


def test_an_action_that_ignores_the_observation_is_all_noise():
    res = noise_share(_policy(0.0, 2.0), OBS, samples=16)
    assert res["noise_share"] == pytest.approx(1.0, abs=0.05)
    assert res["within_obs_std"] == pytest.approx(2.0, rel=0.05)


def test_a_mixture_splits_as_the_law_of_total_variance_says():
    obs_var = float(OBS[:, -1, 0].var())  # the observation's part, per coordinate
    res = noise_share(_policy(1.0, 1.5), OBS, samples=64, seed=3)
    assert res["noise_share"] == pytest.approx(1.5**2 / (1.5**2 + obs_var), abs=0.03)
    assert (res["observations"], res["samples_per_observation"]) == (40, 64)


def test_the_seed_drives_the_noise():
    a = noise_share(_policy(1.0, 1.0), OBS, samples=8, seed=1)
    assert noise_share(_policy(1.0, 1.0), OBS, samples=8, seed=1) == a
    assert noise_share(_policy(1.0, 1.0), OBS, samples=8, seed=2)["noise_share"] != a["noise_share"]


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="at least 2 observations"):
        noise_share(_policy(1.0, 1.0), OBS[:1], samples=8)
    with pytest.raises(ValueError, match="samples=1"):
        noise_share(_policy(1.0, 1.0), OBS, samples=1)
    with pytest.raises(ValueError, match="non-finite action"):
        noise_share(lambda o, g: np.full((o.shape[0], 4, 2), np.nan), OBS, samples=2)


@needs_pusht
def test_cli_on_a_policy_checkpoint(tmp_path):
    step = _policy_ckpt(tmp_path)
    argv = ["noise_share", f"checkpoint={step},{step}", "labels=a,b", "n_obs=4", "samples=3"]
    assert analyze([*argv, "num_inference_steps=2", f"out={tmp_path / 'an'}"]) == 0
    payload = json.loads((tmp_path / "an" / "noise_share_pusht.json").read_text())
    a, b = payload["runs"]["a"], payload["runs"]["b"]
    assert a == b  # same checkpoint, same seed: the same draws
    assert 0.0 <= a["noise_share"] <= 1.5 and a["observations"] == 4 and a["samples_per_observation"] == 3
    assert a["sampler"].endswith(" 2 steps") and "condition_split" in a
    assert (tmp_path / "an" / "noise_share_pusht.png").stat().st_size > 1000


def test_cli_bad_options_are_one_line(tmp_path, capsys):
    step = _policy_ckpt(tmp_path)
    assert "samples=1: use an integer >= 2" in _one_line_error(
        ["noise_share", f"checkpoint={step}", "samples=1", f"out={tmp_path}"], capsys
    )
    assert "n_obs='many': use an integer >= 2" in _one_line_error(
        ["noise_share", f"checkpoint={step}", "n_obs=many", f"out={tmp_path}"], capsys
    )


def test_cli_refuses_an_image_checkpoint(tmp_path, capsys):
    step = _image_ckpt(tmp_path, "vanilla")
    err = _one_line_error(["noise_share", f"checkpoint={step}", f"out={tmp_path}"], capsys)
    assert "noise_share needs a policy checkpoint" in err
