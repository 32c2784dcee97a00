"""``immiscible-analyze leak``: a pairing recipe's condition leak before training
(immiscible_policy.analysis.leak), on synthetic data whose answer is known and on the PushT demos.

Why: the number is meant to warn before a run is spent; a recipe string that dropped an option, a schedule
read at the wrong epoch, or a leak measured on the unpaired noise would wave a breaking recipe through.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_analyze_runs import _image_ckpt, _one_line_error, _policy_ckpt, needs_pusht

from immiscible_policy.analysis.leak import parse_recipe, recipe_leak
from immiscible_policy.cli.analyze import main as analyze


@pytest.fixture(scope="module")
def determined():
    """Action chunks (N, 4, 2) nearly fixed by a 3-number condition: pairing them leaks the condition."""
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2048, 3, generator=g)
    actions = (cond @ torch.randn(3, 8, generator=g)).reshape(-1, 4, 2) + 0.05 * torch.randn(
        2048, 4, 2, generator=g
    )
    return actions, cond


def test_recipe_strings():
    assert parse_recipe("linear+standardize=true+fraction=0.5") == (
        "linear",
        {"standardize": True, "fraction": 0.5},
    )
    assert parse_recipe("knn+k=4+start_epoch=10") == ("knn", {"k": 4, "start_epoch": 10})
    assert parse_recipe(" vanilla ") == ("vanilla", {})
    with pytest.raises(ValueError, match="start with a strategy name"):
        parse_recipe("+k=4")
    with pytest.raises(ValueError, match="option 'standardize' is not key=value"):
        parse_recipe("linear+standardize")


def test_independent_noise_does_not_leak_and_full_matching_does(determined):
    actions, cond = determined
    kw = {"batch": 128, "rows": 2048}
    vanilla = recipe_leak("vanilla", actions, cond, **kw)
    full = recipe_leak("linear+standardize=true", actions, cond, **kw)
    half = recipe_leak("linear+standardize=true+fraction=0.5", actions, cond, **kw)
    assert abs(vanilla["condition_leak"]) < 0.01 and abs(vanilla["noise_proj_x0"]) < 0.1
    assert full["condition_leak"] > 0.1 and full["noise_proj_x0"] > 1.0
    assert vanilla["condition_leak"] < half["condition_leak"] < full["condition_leak"]
    assert full["pair_l2"] < half["pair_l2"] < vanilla["pair_l2"]
    assert (vanilla["paired_share"], half["paired_share"], full["paired_share"]) == (1.0, 0.5, 1.0)
    assert full["settings"] == {"standardize": True} and full["rows"] == 2048


def test_a_scheduled_recipe_is_read_at_its_full_share(determined):
    """A warm-up or a ramp is skipped to the share the recipe trains at, not measured as vanilla."""
    actions, cond = determined
    kw = {"batch": 128, "rows": 1024}
    late = recipe_leak("linear+start_epoch=50+ramp_epochs=10+fraction=0.5", actions, cond, **kw)
    now = recipe_leak("linear+fraction=0.5", actions, cond, **kw)
    assert late["paired_share"] == 0.5 and late["condition_leak"] == pytest.approx(now["condition_leak"])


def test_neighbour_batches_pair_within_groups_without_the_leak(determined):
    """Groups of windows with nearly the same condition: c2ot paired within them moves the noise towards
    the chunks yet leaks (almost) nothing; linear on the same batches leaks as on random ones."""
    actions, cond = determined
    kw = {"batch": 128, "rows": 2048, "episodes": torch.arange(2048) // 4}
    vanilla = recipe_leak("vanilla+neighbour_batches=8", actions, cond, **kw)
    grouped = recipe_leak("c2ot+neighbour_batches=8", actions, cond, **kw)
    linear = recipe_leak("linear+neighbour_batches=8", actions, cond, **kw)
    assert grouped["neighbour_batches"] == 8 and grouped["settings"] == {}
    assert grouped["pair_l2"] < vanilla["pair_l2"]
    assert grouped["noise_proj_x0"] > vanilla["noise_proj_x0"] + 0.1
    assert abs(grouped["condition_leak"]) < 0.02 < linear["condition_leak"]
    with pytest.raises(ValueError, match="neighbour_batches=3; use a whole number >= 1 dividing batch=128"):
        recipe_leak("c2ot+neighbour_batches=3", actions, cond, **kw)
    with pytest.raises(ValueError, match=r"need each window's demo \(episodes=\)"):
        recipe_leak("c2ot+neighbour_batches=8", actions, cond, batch=128, rows=2048)


def test_bad_sizes_are_one_line(determined):
    actions, cond = determined
    with pytest.raises(ValueError, match="batch=4096: use 2 to 2048"):
        recipe_leak("vanilla", actions, cond, batch=4096, rows=8192)
    with pytest.raises(ValueError, match="rows=32: use at least 128"):
        recipe_leak("vanilla", actions, cond, batch=128, rows=32)
    with pytest.raises(ValueError, match="non-finite"):
        recipe_leak("vanilla", actions.clone().fill_(float("nan")), cond, batch=128, rows=256)
    with pytest.raises(ValueError, match="one condition each"):
        recipe_leak("vanilla", actions, cond[:10], batch=8, rows=64)


@needs_pusht
def test_cli_on_the_pusht_demos_and_on_a_run(tmp_path):
    argv = ["leak", "recipes=vanilla,linear+standardize=true", "labels=v,p", "rows=1024"]
    assert analyze([*argv, f"out={tmp_path / 'demos'}"]) == 0
    payload = json.loads((tmp_path / "demos" / "leak_pusht.json").read_text())
    v, p = payload["runs"]["v"], payload["runs"]["p"]
    assert p["condition_leak"] > v["condition_leak"] + 0.02 and p["noise_proj_x0"] > 1.0
    assert payload["windows"] > 20000 and payload["data"]["source"] == "zarr"
    assert (tmp_path / "demos" / "leak_pusht.png").stat().st_size > 1000
    mirrored = ["leak", "recipes=vanilla", "rows=256", "mirror=true", f"out={tmp_path / 'm'}"]
    assert analyze(mirrored) == 0
    assert json.loads((tmp_path / "m" / "leak_pusht.json").read_text())["windows"] == 2 * payload["windows"]
    step = _policy_ckpt(tmp_path, lambda c: c["cfg"]["task"].update(max_train_episodes=12))  # its own split
    assert (
        analyze(["leak", f"checkpoint={step}", "recipes=vanilla", "rows=256", f"out={tmp_path / 'run'}"]) == 0
    )
    run = json.loads((tmp_path / "run" / "leak_pusht.json").read_text())
    assert run["checkpoint"].endswith("00000010") and run["windows"] < payload["windows"]


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    both = ["leak", "checkpoint=/x", "data=/y", f"out={tmp_path}"]
    assert "not both" in _one_line_error(both, capsys)
    labels = ["leak", "recipes=vanilla,linear", "labels=a", f"out={tmp_path}"]
    assert "labels= has 1 names for 2 recipes" in _one_line_error(labels, capsys)
    assert "batch=1: use an integer >= 2" in _one_line_error(["leak", "batch=1", f"out={tmp_path}"], capsys)
    image = ["leak", f"checkpoint={_image_ckpt(tmp_path, 'vanilla')}", f"out={tmp_path}"]
    assert "leak needs a policy checkpoint" in _one_line_error(image, capsys)
