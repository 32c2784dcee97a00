"""Fault injection, library level: nothing we did not write is deleted, nothing non-finite is saved,
loaded or scored, OS errors are one line, and the formerly silent inputs say what happened.

The command-level probes (immiscible-convert / -eval / -train in-process) are in tests/test_faults_cli.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_helpers import READ_ONLY_REASON, CountingExtractor, cfg_of, read_only_folder
from safetensors.torch import save_file

from immiscible_policy import registry
from immiscible_policy.checkpoint import (
    CheckpointError,
    find_latest,
    load_checkpoint,
    save_checkpoint,
)
from immiscible_policy.cli import assigners as assigners_cli
from immiscible_policy.cli._kv import error_line
from immiscible_policy.config_check import check_config
from immiscible_policy.finite import NonFiniteError, NonFiniteGuard, non_finite
from immiscible_policy.outputs import (
    MARKER,
    NotWritableError,
    check_not_nested,
    check_replaceable,
    check_writable,
    staged_dir,
)
from immiscible_policy.policy.episodes import plan_episodes, run_episodes


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    yield from read_only_folder(tmp_path, monkeypatch)


def save_tiny(run: Path, step: int, value: float = 1.0, **kw) -> Path:
    """A checkpoint of a 2-number "model" (enough for everything the checkpoint layer checks)."""
    state = {"w": torch.full((2,), value)}
    return save_checkpoint(
        run,
        step,
        model_state=state,
        ema_state=state,
        config={"step": step, "epoch": step},
        normalizer={"obs": {"scale": [1.0, 2.0]}},
        training_state={"epoch": step, "step": step},
        **kw,
    )


# ------------------------------------------------------------------------------ 1. never delete what we did not write


def test_overwrite_replaces_only_an_empty_or_marked_folder(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    with pytest.raises(ValueError, match=r"holds files immiscible-convert did not write \(thesis.tex; no "):
        check_replaceable(user, overwrite=True, command="immiscible-convert")
    with pytest.raises(ValueError, match="already exists; pick a new folder or pass overwrite=true"):
        check_replaceable(user, overwrite=False, command="immiscible-convert")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file; overwrite=true replaces only a folder"):
        check_replaceable(a_file, overwrite=True, command="immiscible-convert")
    empty = tmp_path / "empty"
    empty.mkdir()
    check_replaceable(empty, overwrite=True, command="immiscible-convert")
    assert (user / "thesis.tex").read_text() == "years of work"


def test_overwrite_refuses_an_earlier_output_holding_a_file_added_by_hand(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out, "immiscible-convert") as stage:
        (stage / "meta").mkdir()
        (stage / "meta" / "info.json").write_text("{}")
    check_replaceable(out, overwrite=True, command="immiscible-convert")  # all ours
    (out / "meta" / "my_notes.md").write_text("mine")
    with pytest.raises(
        ValueError,
        match=r"holds files immiscible-convert did not write \(meta/my_notes.md; added after it wrote",
    ):
        check_replaceable(out, overwrite=True, command="immiscible-convert")


def test_source_and_destination_nested_either_way_are_refused(tmp_path):
    src = tmp_path / "data" / "demo.zarr"
    src.mkdir(parents=True)
    with pytest.raises(ValueError, match=r"^DEST .*data holds SRC .*demo.zarr; replacing it would delete"):
        check_not_nested(src, tmp_path / "data")
    with pytest.raises(ValueError, match=r"^DEST .*out is inside SRC"):
        check_not_nested(src, src / "out")
    with pytest.raises(ValueError, match=r"is inside SRC"):
        check_not_nested(src, src)
    link = tmp_path / "alias"
    link.symlink_to(tmp_path / "data")
    with pytest.raises(ValueError, match="holds SRC"):  # through a symlink too
        check_not_nested(src, link)
    check_not_nested(src, tmp_path / "elsewhere")


def test_staged_output_swaps_in_at_the_end_and_an_error_keeps_the_old_one(tmp_path):
    dest = tmp_path / "out"
    with staged_dir(dest, "test-cmd") as stage:
        (stage / "a.txt").write_text("one")
        assert not dest.exists()  # nothing at DEST until the end
    assert (dest / "a.txt").read_text() == "one" and (dest / MARKER).is_file()
    with pytest.raises(OSError, match="No space left"), staged_dir(dest, "test-cmd", overwrite=True) as stage:
        (stage / "a.txt").write_text("two, half")
        raise OSError(errno.ENOSPC, "No space left on device", str(stage / "b.txt"))
    assert (dest / "a.txt").read_text() == "one"  # the old output, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no partial sibling left
    with staged_dir(dest, "test-cmd", overwrite=True) as stage:
        (stage / "a.txt").write_text("two")
    assert (dest / "a.txt").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_runs_partial_folder_is_removed_only_when_ours(tmp_path):
    dest = tmp_path / "out"
    ours, theirs = tmp_path / ".out.partial-abc", tmp_path / ".out.partial-user"
    ours.mkdir()
    (ours / MARKER).write_text("{}")
    theirs.mkdir()
    (theirs / "keep.txt").write_text("x")
    with staged_dir(dest, "test-cmd"):
        pass
    assert not ours.exists() and (theirs / "keep.txt").exists()


def test_the_marker_names_the_command_and_version(tmp_path):
    with staged_dir(tmp_path / "out", "immiscible-convert") as stage:
        pass
    record = json.loads((tmp_path / "out" / MARKER).read_text())
    assert record["command"] == "immiscible-convert" and record["version"] and stage.name.startswith(".out")


def test_collect_overwrite_replaces_only_its_own_file(tmp_path):
    pytest.importorskip("h5py")
    from immiscible_policy.cli.collect import check_output
    from immiscible_policy.data.robomimic_hdf5 import write_robomimic

    episode = {
        "obs": {"object": np.zeros((3, 2))},
        "actions": np.zeros((3, 7)),
        "rewards": np.zeros(3),
        "dones": np.eye(3)[-1],
        "states": np.zeros((3, 4)),
    }
    downloaded = write_robomimic(tmp_path / "low_dim.hdf5", [episode, episode], {"env_name": "Lift"})
    with pytest.raises(ValueError, match=r"was not written by immiscible-collect .*move it away yourself"):
        check_output(downloaded, overwrite=True)
    assert downloaded.is_file()
    ours = write_robomimic(
        tmp_path / "ours.hdf5", [episode, episode], {"env_name": "Lift"}, attrs={"immiscible_collect": "{}"}
    )
    check_output(ours, overwrite=True)
    with pytest.raises(ValueError, match="already exists; pass overwrite=true"):
        check_output(ours, overwrite=False)
    with pytest.raises(ValueError, match="was not written by immiscible-collect"):
        check_output(tmp_path, overwrite=True)  # a folder


# ------------------------------------------------------------------------------------ 2. stop on non-finite numbers


def test_non_finite_names_the_first_bad_entry():
    assert non_finite({"a": torch.ones(3), "b": [1.0, 2.0]}) is None
    assert non_finite({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan")])}) == "b holds nan"
    assert non_finite({"obs": {"scale": [1.0, float("inf")]}}) == "obs.scale holds inf"
    assert (
        non_finite({"state": {0: {"exp_avg": torch.tensor([float("-inf")])}}}) == "state.0.exp_avg holds -inf"
    )
    assert non_finite({"rng": torch.zeros(4, dtype=torch.uint8), "step": 3, "x": None}) is None


@pytest.mark.parametrize("eager", [True, False])
def test_guard_stops_at_the_first_non_finite_step(eager):
    model = torch.nn.Linear(2, 2)
    guard = NonFiniteGuard(
        torch.device("cpu"), eager=eager, describe=lambda: "the last finite checkpoint is X."
    )
    guard.update(1, torch.tensor(0.5), torch.tensor(1.0))
    guard.check(model, 1)
    if eager:  # the CPU: the step itself raises
        with pytest.raises(
            NonFiniteError, match=r"^training diverged at step 2: the loss is nan; the last finite"
        ):
            guard.update(2, torch.tensor(float("nan")), torch.tensor(1.0))
        with pytest.raises(NonFiniteError, match=r"^training diverged at step 3: the gradient norm is inf;"):
            guard.update(3, torch.tensor(0.1), torch.tensor(float("inf")))
        return
    guard.update(2, torch.tensor(0.5), torch.tensor(float("inf")))  # deferred: no sync, no raise yet
    guard.update(3, torch.tensor(float("nan")))
    with pytest.raises(
        NonFiniteError, match=r"^training diverged at step 2: the loss or gradient norm is not finite;"
    ):
        guard.check(model, 4)


def test_guard_catches_non_finite_weights_at_the_boundary():
    model = torch.nn.Linear(2, 2)
    guard = NonFiniteGuard(torch.device("cpu"), eager=False)
    guard.update(1, torch.tensor(0.5))
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"^training diverged by step 7: the weights hold nan or inf$"):
        guard.check(model, 7)


def test_a_non_finite_state_is_never_saved_and_pruning_keeps_the_last_good(tmp_path):
    run = tmp_path / "run"
    save_tiny(run, 1, keep_last=1)
    good = save_tiny(run, 2, keep_last=1)
    with pytest.raises(
        CheckpointError, match=r"^refusing to save checkpoint 3: model_state: w holds nan \(a diverged run\)"
    ):
        save_tiny(run, 3, value=float("nan"), keep_last=1)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["00000002", "last"]  # no temp dir, no step 3
    assert find_latest(run) == good.resolve() and load_checkpoint(run).step == 2


@pytest.mark.parametrize(
    "damage, message",
    [
        ("model", r"\(model.safetensors: w holds nan\)"),
        ("ema", r"\(ema.safetensors: w holds inf\)"),
        ("normalizer", r"\(normalizer.json: obs.scale holds nan\)"),
    ],
)
def test_loading_refuses_non_finite_weights_or_normalizer(tmp_path, damage, message):
    step = save_tiny(tmp_path / "run", 5)
    if damage == "model":
        save_file({"w": torch.tensor([1.0, float("nan")])}, step / "model.safetensors")
    elif damage == "ema":
        save_file({"w": torch.tensor([float("inf"), 1.0])}, step / "ema.safetensors")
    else:
        (step / "normalizer.json").write_text('{"obs": {"scale": [1.0, NaN]}}')
    with pytest.raises(
        CheckpointError, match=rf"^checkpoint .*00000005 holds non-finite numbers {message}; it "
    ):
        load_checkpoint(tmp_path / "run")


class StillEnvs:
    """Two envs that never end; counts the steps they were asked to take."""

    n_envs, action_shape, action_meaning = 2, (3, 1), "action_dim"

    def __init__(self):
        self.steps = 0

    def reset(self, seeds, record):
        return np.zeros((len(seeds), 2, 2), dtype=np.float32)

    def step(self, idx, actions):
        self.steps += 1
        return (
            np.zeros((2, 2, 2), dtype=np.float32),
            [{"n_steps": 1, "max_score": 0.0}] * len(idx),
            np.ones(len(idx), bool),
        )

    def close(self):
        pass


def test_non_finite_actions_stop_the_evaluation_before_the_simulator():
    envs = StillEnvs()
    plan = plan_episodes(2, 0, None, video_path=None, n_video_episodes=0)

    def nan_policy(obs):
        out = np.zeros((len(obs), 3, 1), dtype=np.float32)
        out[1, 2, 0] = np.nan
        return out

    with pytest.raises(
        ValueError, match=r"^the policy returned non-finite actions \(nan in 1 of 2 running episodes\), so"
    ):
        run_episodes(nan_policy, envs, plan, score=None, progress=False)
    assert envs.steps == 0  # never sent to the simulator


# --------------------------------------------------------------------------------------------- 3. OS errors, one line


def test_a_read_only_output_is_refused_before_any_work(read_only):
    target = read_only / "out" / "metrics.json"
    with pytest.raises(NotWritableError) as info:
        check_writable(target)
    assert re.match(rf"^error: cannot write {target}: {READ_ONLY_REASON}", error_line(info.value))


def test_disk_full_while_checkpointing_is_one_line_and_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    save_tiny(run, 1)
    import immiscible_policy.checkpoint as checkpoint

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "_write_bytes", full)
    with pytest.raises(OSError) as info:
        save_tiny(run, 2)
    line = error_line(info.value)
    assert line.startswith("error: cannot write ") and line.endswith(
        "model.safetensors: No space left on device; free some space or write elsewhere"
    ), line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["00000001", "last"]
    assert load_checkpoint(run).step == 1


# ------------------------------------------------------------------------------------------------ 4. the silent ones


@pytest.mark.parametrize("value", ["1.0", "1.5", "-0.1"])
def test_val_ratio_outside_0_1_is_refused(value):
    with pytest.raises(
        ValueError, match=rf"^task.val_ratio={value} is out of range; use a number >= 0 and < 1"
    ):
        check_config(cfg_of(f"task.val_ratio={value}"))


@pytest.mark.parametrize("name", ["../../../outside", "a/b", "..", ".hidden"])
def test_task_name_is_a_plain_name(name):
    with pytest.raises(ValueError, match=r"^task.name=.* is used in run directory names; use a plain name"):
        check_config(cfg_of(f"task.name='{name}'"))


def test_a_copied_last_directory_is_read_as_its_step(tmp_path):
    run = tmp_path / "run"
    save_tiny(run, 1)
    save_tiny(run, 2)
    ckpts = run / "checkpoints"
    (ckpts / "last").unlink()
    shutil.copytree(ckpts / "00000002", ckpts / "last")  # what `cp -rL` makes of the symlink
    assert find_latest(run) == (ckpts / "00000002").resolve()
    assert load_checkpoint(run).step == 2 and load_checkpoint(ckpts / "last").step == 2
    save_tiny(run, 3)  # resuming in the copy: `last` becomes a link again
    assert (ckpts / "last").is_symlink() and load_checkpoint(ckpts / "last").step == 3
    orphan = tmp_path / "orphan"
    shutil.copytree(ckpts / "00000003", orphan / "last")
    (orphan / "last" / "config.json").write_text("{}")
    with pytest.raises(
        CheckpointError, match=r"cannot tell its step .*; pass its step folder, checkpoints/<step>"
    ):
        load_checkpoint(orphan / "last")


def test_plugin_calling_os_exit_at_import_is_listed_as_broken(tmp_path, monkeypatch, capsys):
    info = tmp_path / "fake_osexit-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-osexit\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[immiscible_policy.assigners]\nquitter = fake_osexit:Q\n")
    (tmp_path / "fake_osexit.py").write_text(textwrap.dedent("import os\nos._exit(0)\n"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.DISABLE_ENV, raising=False)
    registry.refresh()
    try:
        assert assigners_cli.main([]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert any(line.startswith("knn ") for line in lines)  # the listing survived
        quitter = next(line for line in lines if line.startswith("quitter "))
        assert (
            "ERROR: Assigner 'quitter' (fake_osexit:Q) failed to import: PluginExitError: called os._exit(0) "
            "while being imported [from fake-osexit 1.0]"
        ) in quitter
        with pytest.raises(registry.AssignerImportError, match="called os._exit"):
            registry.create("quitter")  # selecting it: one line, never a silent exit
        assert os._exit.__name__ == "_exit"  # restored
    finally:
        registry.refresh()
        sys.modules.pop("fake_osexit", None)


def test_fid_from_few_images_warns_with_the_count_and_scipy_stays_quiet():
    from immiscible_policy.metrics.fid import SmallSampleWarning, evaluate_images, fid_from_stats

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(20, 1, 4, 4, generator=gen) * 2 - 1, torch.rand(20, 1, 4, 4, generator=gen) * 2 - 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate_images(a, b, extractor=CountingExtractor())
        singular = np.zeros((3, 3))
        singular[0, 0] = 1.0
        fid_from_stats(np.zeros(3), singular, np.ones(3), singular)  # sqrtm of a singular product
    assert np.isfinite(res["fid"]) and res["n_fake"] == 20
    kinds = [w.category for w in caught]
    assert kinds == [SmallSampleWarning], [str(w.message) for w in caught]
    assert str(caught[0].message).startswith(
        "FID from 20 generated and 20 reference images is biased upward and depends on the number of images"
    )
