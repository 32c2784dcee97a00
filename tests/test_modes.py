"""Rotation modes (docs/modes.md): the classifier on synthetic angle series, the summaries and flat record
keys, the mode plot, and the PushT demos' split (which skips without the demos, naming the path)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from immiscible_policy.analysis.modes import demo_modes
from immiscible_policy.cli.analyze import main as analyze
from immiscible_policy.metrics.pusht_modes import (
    ROTATION_THRESHOLD_DEG,
    flat_modes,
    mode_line,
    mode_summary,
    net_rotation,
    rotation_mode,
    side_of,
)
from immiscible_policy.policy.dataset import default_pusht_zarr

ZARR = Path(default_pusht_zarr())
needs_pusht = pytest.mark.skipif(
    not ZARR.exists(), reason=f"PushT demos not found at {ZARR} (set IMMISCIBLE_PUSHT_ZARR)"
)


def _wrapped(start: float, stop: float, n: int = 200) -> np.ndarray:
    """An angle series from ``start`` to ``stop`` (rad) recorded wrapped to [0, 2 pi), as the demos are."""
    return np.linspace(start, stop, n) % (2 * np.pi)


@pytest.mark.parametrize(
    ("start", "stop", "mode"),
    [
        (0.5, 2.0, "cw"),  # +86 degrees
        (2.0, 0.5, "ccw"),
        (1.0, 1.5, "none"),  # 29 degrees: a correction, not a turn
        (3.0, 4.2, "cw"),  # through +pi, where a wrapped angle jumps from 2 pi to 0 ... (here pi)
        (6.0, 7.0, "cw"),  # ... through 2 pi = 0, the demos' wrap point
        (0.3, -0.9, "ccw"),  # through 0 the other way
        (-3.0, -4.2, "ccw"),  # through -pi
        (1.0, 1.0 + 3 * math.pi, "cw"),  # one and a half turns: the net rotation, not its remainder
    ],
)
def test_rotation_mode_of_wrapped_series(start, stop, mode):
    series = _wrapped(start, stop)
    assert series.min() >= 0 and series.max() < 2 * np.pi
    assert net_rotation(series) == pytest.approx(stop - start, abs=1e-9)
    assert rotation_mode(net_rotation(series)) == mode


def test_threshold_edges_and_sign():
    edge = math.radians(ROTATION_THRESHOLD_DEG)
    assert ROTATION_THRESHOLD_DEG == 45.0
    assert rotation_mode(edge) == "cw" and rotation_mode(-edge) == "ccw"  # exactly the threshold counts
    below = np.nextafter(edge, 0.0)
    assert rotation_mode(below) == rotation_mode(-below) == "none"
    assert rotation_mode(0.0) == "none"
    assert rotation_mode(math.radians(20), threshold_deg=10) == "cw"
    assert rotation_mode(math.radians(20), threshold_deg=30) == "none"
    assert rotation_mode(-1e-9, threshold_deg=0) == "ccw"
    with pytest.raises(ValueError, match="net_rotation=nan: use a finite angle in radians"):
        rotation_mode(float("nan"))
    with pytest.raises(ValueError, match="threshold_deg=-1: use a non-negative angle"):
        rotation_mode(1.0, threshold_deg=-1)


def test_side_of_keeps_the_margin_semantics():
    assert [side_of(x) for x in (-10.5, -10.0, 0.0, 10.0, 10.5)] == [
        "left",
        "center",
        "center",
        "center",
        "right",
    ]
    assert side_of(float("nan")) == "none" and side_of(5.0, margin=1.0) == "right"


def test_mode_summary_shares_entropy_and_flat_keys():
    deg = [100, 60, -50, 170, -10, 30, -44.9]  # 3 cw, 1 ccw, 3 none
    sides = ["left", "left", "right", "center", "none", "left", "left"]
    m = mode_summary([math.radians(d) for d in deg], sides)
    assert m["n_rollouts"] == 7 and m["rotation"] == {"cw": 3, "ccw": 1, "none": 3}
    assert m["dominant_share"] == pytest.approx(0.75) and m["entropy_bits"] == pytest.approx(0.8112781)
    assert m["threshold_deg"] == 45.0
    assert m["approach"] == {"left": 4, "center": 1, "right": 1, "none": 1}
    assert m["approach_left_share"] == pytest.approx(0.8) and m["approach_entropy_bits"] == pytest.approx(
        0.7219281
    )
    # a collapse onto ccw: dominant share 1, entropy 0; an even split: 0.5, 1 bit
    assert mode_summary([-1.0] * 4, ["left"] * 4)["dominant_share"] == 1.0
    even = mode_summary([1.0, -1.0], ["left", "right"])
    assert even["dominant_share"] == 0.5 and even["entropy_bits"] == pytest.approx(1.0)
    # nothing turned / nothing touched a half: None, not a 0 that would read as a collapse
    still = mode_summary([0.0, 0.1], ["none", "center"])
    assert still["dominant_share"] is None and still["entropy_bits"] is None
    assert still["approach_left_share"] is None and still["approach_entropy_bits"] is None

    flat = flat_modes(m, "sym_modes_")
    assert flat == {
        "sym_modes_cw": 3,
        "sym_modes_ccw": 1,
        "sym_modes_none": 3,
        "sym_modes_dominant_share": m["dominant_share"],
        "sym_modes_entropy_bits": m["entropy_bits"],
        "sym_modes_approach_left_share": m["approach_left_share"],
        "sym_modes_approach_entropy_bits": m["approach_entropy_bits"],
    }
    assert mode_line(flat, "sym_modes_") == " turns cw/ccw/none 3/1/3 (dominant 0.75)"
    assert mode_line(flat_modes(still), "modes_") == " turns cw/ccw/none 0/0/2"
    assert mode_line({"mean_score": 0.5}, "modes_") == ""


def test_mode_plot_from_records(tmp_path):
    from immiscible_policy.run_log import plot_mode_history

    records = [
        {
            "epoch": e,
            "modes_cw": 10 + e,
            "modes_ccw": 30 - e,
            "modes_none": 10,
            "sym_modes_cw": 40,
            "sym_modes_ccw": 5,
            "sym_modes_none": 5,
        }
        for e in (1, 2, 3)
    ] + [{"epoch": 3, "train_loss": 0.1}]  # a record without modes is skipped
    assert plot_mode_history(tmp_path / "modes.png", records)
    assert (tmp_path / "modes.png").stat().st_size > 5000
    assert not plot_mode_history(tmp_path / "none.png", [{"epoch": 1, "mean_score": 0.5}])
    assert not (tmp_path / "none.png").exists()


def test_demo_modes_on_a_small_store(tmp_path):
    """Two synthetic episodes recorded with wrapped angles: one turned cw through 2 pi = 0 after a contact on
    the right half, one still; the first of them starts with the block sliding (no agent near it)."""
    from immiscible_policy.data import ReplayBuffer

    n = 50
    x0, y0, theta = 259.0, 256.0, 6.0  # the pose the block comes to rest in at step 2
    block = np.tile([x0, y0], (n, 1))
    block[:2] = [[254.0, y0], [257.0, y0]]  # sliding for two steps (the agent is 200 px away)
    block[9:] += [1.0, 1.0]  # ... the block moves again at step 9, pushed by the agent there since step 8
    turn = np.full(n, theta)
    turn[9:] = np.linspace(theta, theta + 1.5, n - 9)  # +86 degrees, through the wrap point 2 pi = 0
    agent = np.tile([x0 - 200.0, y0], (n, 1))
    agent[8:] = [x0 + 40.0 * np.cos(theta), y0 + 40.0 * np.sin(theta)]  # block-frame x = +40: right
    ep1 = np.column_stack([agent, block, turn % (2 * np.pi)])
    ep2 = np.tile([100.0, 100.0, 300.0, 300.0, 1.0], (20, 1))
    # a third starts 174 degrees past the goal angle (the short way is ccw) and turns 190 degrees cw
    ep3 = np.tile([100.0, 100.0, 300.0, 300.0, 0.0], (20, 1))
    ep3[:, 4] = (np.pi / 4 + np.radians(174.0) + np.linspace(0.0, np.radians(190.0), 20)) % (2 * np.pi)
    store = tmp_path / "demos.zarr"
    states = np.vstack([ep1, ep2, ep3]).astype(np.float32)
    ReplayBuffer.create(store, {"state": states}, [n, n + 20, n + 40])
    assert demo_modes(store) == json.loads(json.dumps(demo_modes(store)))  # plain JSON values
    assert analyze(["demo_modes", f"data={store}", f"out={tmp_path}"]) == 0  # the command: JSON + PNG
    d = json.loads((tmp_path / "demo_modes_pusht.json").read_text())
    assert (tmp_path / "demo_modes_pusht.png").stat().st_size > 5000
    assert d["n_episodes"] == 3 and d["n_sliding_at_start"] == 1
    assert [e["mode"] for e in d["episodes"]] == ["cw", "none", "cw"]
    assert [e["approach"] for e in d["episodes"][:2]] == ["right", "none"]
    assert [e["long_way"] for e in d["episodes"]] == [False, False, True]
    assert d["episodes"][2]["start_from_goal_deg"] == pytest.approx(174.0, abs=0.01)
    for name in ("far_from_goal", "upside_down"):  # 174 degrees: far from the goal and within 15 of 180
        assert d[name]["rotation"] == {"cw": 1, "ccw": 0, "none": 0} and d[name]["long_way"] == {
            "cw": 1,
            "ccw": 0,
        }
    assert demo_modes(store, upside_down_deg=5)["upside_down"]["n_rollouts"] == 0
    assert d["episodes"][0]["rotation_deg"] == pytest.approx(math.degrees(1.5), abs=0.01)
    # the start angle, 6.0 rad, is 61 degrees short of the goal's 45 (mod 360): not among the far starts
    assert d["episodes"][0]["start_from_goal_deg"] == pytest.approx(
        math.degrees(6.0 - 2 * math.pi - math.pi / 4), abs=0.01
    )
    assert d["all"]["rotation"] == {"cw": 2, "ccw": 0, "none": 1}
    assert d["all"]["long_way"] == {"cw": 1, "ccw": 0}
    # a larger threshold makes the 86-degree turn a "none"
    assert demo_modes(store, threshold_deg=90)["all"]["rotation"] == {"cw": 1, "ccw": 0, "none": 2}


def test_demo_modes_command_errors_are_one_line(tmp_path, capsys):
    assert analyze(["demo_modes", "threshold_deg=abc", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: threshold_deg='abc': use a number of degrees (margin: pixels)."
    assert analyze(["demo_modes", f"data={tmp_path / 'missing.zarr'}", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.zarr: no such path" in err


@pytest.mark.parametrize("source", ["embedded", "zarr"])
def test_demo_split_matches_the_known_counts(source):
    """The 206 human demos; among the 49 started more than 135 degrees from the goal angle the T is turned
    one way in 26 and the other in 23 (an independent count). The embedded copy gives the same split."""
    if source == "zarr" and not ZARR.exists():
        pytest.skip(f"PushT demos not found at {ZARR} (set IMMISCIBLE_PUSHT_ZARR)")
    d = demo_modes("embedded" if source == "embedded" else ZARR)
    assert d["n_episodes"] == 206 and d["threshold_deg"] == 45.0
    far = d["far_from_goal"]
    assert far["n_rollouts"] == 49 and far["rotation"] == {"cw": 26, "ccw": 23, "none": 0}
    # near upside down (the symmetric starts' angle) the demos lean clockwise: 13 / 7, and the only three
    # turns the long way round (all of them beyond 135 degrees, two within 15 of upside down) are clockwise
    up = d["upside_down"]
    assert up["max_deg"] == 15.0 and up["n_rollouts"] == 20
    assert up["rotation"] == {"cw": 13, "ccw": 7, "none": 0} and up["long_way"] == {"cw": 2, "ccw": 0}
    assert far["long_way"] == d["all"]["long_way"] == {"cw": 3, "ccw": 0}
    assert sum(e["long_way"] for e in d["episodes"]) == 3
    assert all(abs(e["start_from_goal_deg"]) > 135 for e in d["episodes"] if e["long_way"])
    assert d["all"]["rotation"] == {"cw": 91, "ccw": 72, "none": 43}
    assert sum(d["all"]["approach"].values()) == 206 and d["all"]["approach"]["none"] == 0
    # the threshold's evidence: one demo turns 42 degrees the wrong way before its committed turn, the
    # others at most 6: 45 degrees separates a committed turn from a correction
    assert 40 < d["max_opposite_turn_deg"][0] < 45 and d["max_opposite_turn_deg"][1] < 6
    # humans turn the short way whenever the start is < 135 degrees from the goal
    for e in d["episodes"]:
        if e["mode"] != "none" and abs(e["start_from_goal_deg"]) < 135:
            assert np.sign(e["rotation_deg"]) == -np.sign(e["start_from_goal_deg"])
