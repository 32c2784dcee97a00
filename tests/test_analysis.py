"""Analysis maths on cases with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from immiscible_policy import create
from immiscible_policy.analysis.inversion import ddim_invert, ddim_sample
from immiscible_policy.analysis.losses import bucket_curves, plot_bucket_losses
from immiscible_policy.analysis.mixing import mixing_curve


def test_mixing_two_far_points_known_limits():
    sched = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.zeros(2, 8)
    x0[0, 0], x0[1, 0] = -20.0, 20.0
    curve = mixing_curve(x0, create("vanilla"), sched.alphas_cumprod, [0, 999], repeats=8)
    assert curve[0]["mixing"] < 1e-6  # unambiguous at small t
    assert abs(curve[1]["mixing"] - 0.5) < 0.05  # indistinguishable at t -> T


def test_linear_mixes_less_than_vanilla_on_toy_data_at_high_t():
    sched = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 4, generator=g) * 3
    t = [800]
    v = mixing_curve(x0, create("vanilla"), sched.alphas_cumprod, t, repeats=4)[0]["mixing"]
    lin = mixing_curve(x0, create("linear"), sched.alphas_cumprod, t, repeats=4)[0]["mixing"]
    assert lin < v


def test_ddim_inversion_exact_for_x_independent_model():
    sched = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    bias = torch.randn(1, 16, 2, generator=torch.Generator().manual_seed(1)) * 0.1

    def model(x, t):  # epsilon prediction independent of x: DDIM is an exact affine bijection
        return bias.expand_as(x) * (1 + t.view(-1, 1, 1).float() / 100)

    noise = torch.randn(5, 16, 2, generator=torch.Generator().manual_seed(2))
    sample = ddim_sample(model, noise, sched.alphas_cumprod, steps=20)
    assert not torch.allclose(sample, noise)
    back = ddim_invert(model, sample, sched.alphas_cumprod, steps=20)
    torch.testing.assert_close(back, noise, rtol=1e-4, atol=1e-4)


def test_bucket_loss_curves_and_plot(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"epoch": e, "step": 10 * e, "loss_t0": 1.0 / e, "loss_t1": 2.0 / e} for e in (1, 2)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    curves = bucket_curves(run)
    assert curves[1] == [(10, 2.0), (20, 1.0)]
    out = plot_bucket_losses([run, run], tmp_path / "b.png", labels=["a", "b"])
    assert (tmp_path / "b.png").stat().st_size > 1000 and set(out) == {"a", "b"}
    with pytest.raises(FileNotFoundError, match="metrics.jsonl not found"):
        bucket_curves(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------- inversion


def test_epsilon_model_recovers_eps_from_v_and_x0_predictions():
    from immiscible_policy.analysis.inversion import epsilon_model

    ac = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, generator=g), torch.randn(6, 3, 4, generator=g)
    t = torch.tensor([0, 10, 30, 50, 80, 99])
    a = ac[t].view(-1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(epsilon_model(lambda x, tt: v, "v_prediction", ac)(x_t, t), eps)
    torch.testing.assert_close(
        epsilon_model(lambda x, tt: x0, "sample", ac)(x_t, t), eps, rtol=1e-4, atol=2e-3
    )
    with pytest.raises(ValueError, match="cannot be inverted with DDIM"):
        epsilon_model(lambda x, tt: x, "flow", ac)


def test_euler_flow_inversion_exact_for_x_independent_velocity():
    from immiscible_policy.analysis.inversion import euler_invert, euler_sample

    def velocity(x, t):  # depends on t only: Euler steps are exact translations, so inversion is exact
        return torch.ones_like(x) * (t.view(-1, 1) / 1000.0) ** 2

    noise = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    sample = euler_sample(velocity, noise, steps=7, timestep_scale=1000.0)
    assert (sample - noise).abs().min() > 0.1
    torch.testing.assert_close(euler_invert(velocity, sample, steps=7, timestep_scale=1000.0), noise)


def test_fixed_point_refinement_makes_ddim_inversion_exact_for_x_dependent_model():
    ac = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2").alphas_cumprod

    def model(x, t):  # a mildly x-dependent predictor: plain inversion is only approximate
        return 0.3 * x + 0.1

    noise = torch.randn(8, 16, generator=torch.Generator().manual_seed(4))
    sample = ddim_sample(model, noise, ac, steps=10)
    plain = (ddim_invert(model, sample, ac, steps=10) - noise).norm() / noise.norm()
    refined_x = ddim_invert(model, sample, ac, steps=10, fixed_point_iters=30)
    refined = (refined_x - noise).norm() / noise.norm()
    assert plain > 1e-3 and refined < 1e-4 and refined < plain / 100
    with pytest.raises(ValueError, match="steps=200 must be between 1 and the 100"):
        ddim_sample(model, noise, ac, steps=200)


def test_round_trip_reports_resample_of_recovered_noise():
    from immiscible_policy.analysis.inversion import round_trip
    from immiscible_policy.noising import NoisingCore

    core = NoisingCore(DDPMScheduler(num_train_timesteps=100), create("vanilla"))
    noise = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(5))
    sample, back, again = round_trip(core, lambda x, t: torch.zeros_like(x), noise, steps=5)
    torch.testing.assert_close(back, noise, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, sample, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- diversity


def test_nearest_indices_match_brute_force_across_chunks():
    from immiscible_policy.analysis.bijectivity import nearest_indices

    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (50, 1, 4, 4), generator=g, dtype=torch.uint8)
    samples = torch.rand(9, 1, 4, 4, generator=g) * 2 - 1

    def to_float(u8):
        return u8.float() / 127.5 - 1

    brute = torch.cdist(samples.flatten(1), to_float(train).flatten(1)).argmin(1)
    assert torch.equal(nearest_indices(samples, train, chunk=7, to_float=to_float), brute)


def test_diversity_counts_and_class_entropy():
    from immiscible_policy.analysis.bijectivity import diversity

    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    d = diversity(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), labels, num_classes=5)
    assert d["distinct_nearest"] == 4 and d["n_samples"] == 8
    assert d["class_entropy_bits"] == pytest.approx(2.0) and d["classes_covered"] == 4
    collapsed = diversity(torch.tensor([5, 5, 5]), labels, num_classes=5)
    assert collapsed["distinct_nearest"] == 1 and collapsed["class_entropy_bits"] == 0.0
    assert "class_entropy_bits" not in diversity(torch.tensor([0, 1]), None, 0)


# ---------------------------------------------------------------------------------------------- modes


def _approach(local_contact: tuple[float, float], theta: float, origin=(200.0, 300.0), n_free=5):
    """A straight approach to a contact point given in the block frame; the block moves after contact."""
    c, s = np.cos(theta), np.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    contact = rot @ np.asarray(local_contact) + np.asarray(origin)
    start = contact + rot @ np.array([0.0, -150.0])
    agent = np.linspace(start, contact, n_free + 1)
    agent = np.vstack([agent, contact + [[1.0, 1.0]]])
    pose = np.tile([*origin, theta], (len(agent), 1))
    pose[-1, :2] += 2.0  # the block moves at the last step: first contact there
    return agent, pose


@pytest.mark.parametrize("theta", [0.0, np.pi / 2, np.pi, -2.5])
def test_approach_side_uses_the_block_frame(theta):
    from immiscible_policy.metrics.pusht_modes import approach_side

    side, k, x = approach_side(*_approach((-40.0, -20.0), theta))
    assert (
        side == "left"
        and k == 6
        and x == pytest.approx(-40.0 + 1.0 * np.cos(theta) + np.sin(theta), abs=1e-6)
    )
    assert approach_side(*_approach((40.0, 130.0), theta))[0] == "right"
    assert approach_side(*_approach((4.0, 140.0), theta))[0] == "center"
    assert approach_side(*_approach((4.0, 140.0), theta), margin=1.0)[0] == "right"


def test_approach_side_none_and_bad_shapes():
    from immiscible_policy.metrics.pusht_modes import approach_side

    agent, pose = _approach((-40.0, -20.0), 0.3)
    pose[:] = pose[0]  # the block never moves
    assert approach_side(agent, pose)[:2] == ("none", -1)
    with pytest.raises(ValueError, match="agent_xy must be"):
        approach_side(agent[:, :1], pose)


def test_mode_summary_and_binary_entropy():
    from immiscible_policy.metrics.pusht_modes import binary_entropy, summarize

    assert binary_entropy(0.5) == pytest.approx(1.0) and binary_entropy(0.0) == binary_entropy(1.0) == 0.0
    s = summarize(["left", "right", "left", "left", "center", "none"])
    assert s["counts"] == {"left": 3, "center": 1, "right": 1, "none": 1}
    assert s["left_share"] == pytest.approx(0.75) and s["binary_entropy_bits"] == pytest.approx(0.8112781)
    one = summarize(["none", "center"])
    assert one["left_share"] != one["left_share"] and one["binary_entropy_bits"] == 0.0


def test_clear_starts_match_the_env_and_leave_room():
    pytest.importorskip("gym_pusht")
    from immiscible_envs.pusht import PushTEnv, block_keypoints

    from immiscible_policy.analysis.modes import clear_starts

    seeds = clear_starts(3, min_gap=80.0)
    assert len(seeds) == 3 and seeds == sorted(seeds) and seeds[0] >= 100000
    env = PushTEnv(render_mode=None)
    for seed in seeds:
        env.reset(seed=seed)
        st = env.state
        assert np.linalg.norm(block_keypoints(st[2:4], st[4]) - st[:2], axis=1).min() > 80.0
    env.close()
    with pytest.raises(ValueError, match="clear start"):
        clear_starts(5, min_gap=1e4, max_tries=20)
