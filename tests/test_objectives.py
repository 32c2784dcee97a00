"""Objectives as strategies: every built-in keeps the interface's promises, the registry follows the
assigners' rules, and an objective registered in-process trains and samples through the real trainer."""

from __future__ import annotations

import json
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from hydra import compose, initialize_config_dir

from immiscible_policy import objectives, registry
from immiscible_policy.cli._hydra import config_dir
from immiscible_policy.noising import (
    LEGACY_OBJECTIVE_KEY,
    OBJECTIVES,
    SAMPLERS,
    NoisingCore,
    noise_generator,
    resolve_sampler,
    trainer_objective,
)
from immiscible_policy.objectives import DDPMObjective, Objective, RectifiedFlow
from immiscible_policy.objectives.base import broadcast
from immiscible_policy.objectives.flow import euler_sample
from immiscible_policy.registry import create

T = 100
BUILTIN = ("epsilon", "v_prediction", "sample", "flow")


def built(name: str) -> Objective:
    return objectives.create(name, num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")


# ------------------------------------------------------------------------------------------ a toy objective


class FlowX0(Objective):
    """Rectified flow's straight path with an x0 target: the model predicts the data and sampling turns
    that into the path's velocity, v = (x_t - x0_hat) / t (t >= 1/steps on Euler's grid)."""

    names = ("toy-flow-x0",)
    samplers = ("euler",)
    calls: ClassVar[Counter] = Counter()

    def __init__(self, timestep_scale: float = 1.0) -> None:
        self.timestep_scale = float(timestep_scale)

    @classmethod
    def from_trainer(cls, name, *, num_train_timesteps, beta_schedule):
        return cls(timestep_scale=num_train_timesteps)

    def draw_timesteps(self, batch, device, generator):
        return torch.rand(batch, device=device, generator=generator)

    def add_noise(self, x0, noise, t):
        tt = broadcast(t, x0)
        return (1 - tt) * x0 + tt * noise

    def target(self, x0, noise, t):
        FlowX0.calls["target"] += 1
        return x0

    def model_timesteps(self, t):
        return t * self.timestep_scale

    def timestep_fraction(self, t):
        return t.float()

    def sample(self, model_fn, noise, *, num_inference_steps, sampler, generator=None, data_range=None):
        FlowX0.calls["sample"] += 1
        scale = self.timestep_scale

        def velocity(x, model_t):
            return (x - model_fn(x, model_t)) / broadcast(model_t / scale, x)

        return euler_sample(velocity, noise, num_inference_steps or 8, scale)


@pytest.fixture
def toy():
    objectives.register("toy-flow-x0")(FlowX0)
    FlowX0.calls.clear()
    yield "toy-flow-x0"
    objectives.unregister("toy-flow-x0")


# ------------------------------------------------------------------------------ the built-ins' contract


def test_builtin_tables_are_the_registered_built_ins():
    """OBJECTIVES / SAMPLERS (what older callers import) come from the classes the registry serves."""
    assert OBJECTIVES == BUILTIN
    expected = {n: ("ddim", "ddpm") for n in BUILTIN[:3]} | {"flow": ("euler", "heun")}
    assert expected == SAMPLERS
    listed = {n: e for n, e in objectives.available().items() if e.origin == registry.BUILTIN_DIST}
    assert sorted(listed) == sorted(BUILTIN)
    for name in BUILTIN:
        cls = objectives.get_class(name)
        assert name in cls.names and cls.samplers == SAMPLERS[name]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_keeps_the_interface(name):
    obj = built(name)
    assert isinstance(obj, Objective) and obj.name == name
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(16, 4, 3, generator=g) * 2 - 1, torch.randn(16, 4, 3, generator=g)
    t = obj.draw_timesteps(16, torch.device("cpu"), g)
    assert t.shape == (16,)
    frac = obj.timestep_fraction(t)
    assert ((frac >= 0) & (frac < 1)).all()
    x_t, target = obj.add_noise(x0, noise, t), obj.target(x0, noise, t)
    assert x_t.shape == target.shape == x0.shape
    if name == "flow":
        tt = t.view(-1, 1, 1)
        torch.testing.assert_close(x_t, (1 - tt) * x0 + tt * noise)
        torch.testing.assert_close(target, noise - x0)
        torch.testing.assert_close(x_t - tt * target, x0)  # the target points back along the path
        torch.testing.assert_close(obj.model_timesteps(t), t * T)
        return
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) < T
    a = obj.alphas_cumprod[t].view(-1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)
    expected = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * x0, "sample": x0}
    torch.testing.assert_close(target, expected[name])
    assert torch.equal(obj.model_timesteps(t), t)
    torch.testing.assert_close(frac, t.float() / T)


def oracle(name: str, obj: Objective, point: torch.Tensor):
    """The model that is exactly right when the data is the single ``point``."""

    def fn(x, model_t):
        x0 = point.expand_as(x)
        if name == "toy-flow-x0":
            return x0
        if name == "flow":
            return (x - x0) / broadcast(model_t / obj.timestep_scale, x)
        a = broadcast(obj.alphas_cumprod[model_t.long()], x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[name]

    return fn


@pytest.mark.parametrize("name", [*BUILTIN, "toy-flow-x0"])
def test_every_sampler_of_every_objective_lands_on_a_single_data_point(name, toy):
    """An exact model of a one-point data set makes every sampler end on that point (and the core decodes)."""
    obj = built(name)
    point = torch.rand(1, 6, 2, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
    core = NoisingCore(obj, create("scale", s=2.0))
    for sampler in type(obj).samplers:
        out = core.sample(
            oracle(name, obj, 2.0 * point),  # the model lives in the assigner's scaled space
            (3, 6, 2),
            num_inference_steps=10,
            sampler=sampler,
            generator=torch.Generator().manual_seed(0),
        )
        torch.testing.assert_close(out, point.expand(3, 6, 2), atol=1e-4, rtol=1e-4, msg=f"{name}/{sampler}")


@pytest.mark.parametrize("name", BUILTIN)
def test_samplers_are_the_objective_s_own(name):
    cls = type(built(name))
    default = "euler" if name == "flow" else "ddpm"
    assert resolve_sampler(name, "auto", diffusion_default="ddpm") == default
    assert resolve_sampler(name, None) == ("euler" if name == "flow" else "ddim")
    wrong = "ddim" if name == "flow" else "euler"
    with pytest.raises(ValueError, match=rf"^sampler='{wrong}' does not fit objective '{name}'; use "):
        resolve_sampler(name, wrong)
    assert cls.resolve_sampler(name, cls.samplers[-1]) == cls.samplers[-1]


def test_a_scheduler_an_objective_and_the_factory_give_the_same_pairs():
    """Callers that pass a diffusers scheduler (as before objectives were strategies) get the objective
    the factory builds, draw for draw."""
    sched = DDPMScheduler(
        num_train_timesteps=T,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=True,
        prediction_type="v_prediction",
    )
    cores = [
        NoisingCore(sched, create("vanilla")),
        NoisingCore(DDPMObjective(sched), create("vanilla")),
        NoisingCore(built("v_prediction"), create("vanilla")),
    ]
    assert isinstance(cores[0].objective_impl, DDPMObjective) and cores[0].objective == "v_prediction"
    x0 = torch.randn(8, 16, 2)
    pairs = [c.training_pair(x0, noise_generator(0, 0, 3)) for c in cores]
    for p in pairs[1:]:
        for f in ("x_t", "timesteps", "model_timesteps", "target", "noise"):
            assert torch.equal(getattr(p, f), getattr(pairs[0], f)), f
    assert isinstance(NoisingCore(RectifiedFlow(), create("vanilla")).objective_impl, RectifiedFlow)
    with pytest.raises(TypeError, match="expected an immiscible_policy.objectives.Objective or a diffusers"):
        NoisingCore(object(), create("vanilla"))
    bad = DDPMScheduler(num_train_timesteps=T, prediction_type="epsilon")
    bad.register_to_config(prediction_type="flow")
    with pytest.raises(ValueError, match="Unsupported scheduler prediction_type 'flow'"):
        NoisingCore(bad, create("vanilla"))


def test_the_core_trains_on_what_the_objective_says(toy):
    """No objective branch in the core: a plugin's target and timesteps are what the pair holds."""
    core = NoisingCore(built(toy), create("vanilla"))
    x0 = torch.randn(8, 5)
    tp = core.training_pair(x0, torch.Generator().manual_seed(0))
    assert core.objective == toy and torch.equal(tp.target, x0)
    torch.testing.assert_close(tp.model_timesteps, tp.timesteps * T)
    assert core.bucket_losses(torch.ones(8), tp.timesteps).nansum() > 0


def test_inversion_round_trip_asks_the_objective(toy):
    from immiscible_policy.analysis.inversion import round_trip

    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))

    def velocity(x, t):  # x-independent: Euler inversion is exact
        return torch.ones_like(x) * (t.view(-1, 1) / T)

    core = NoisingCore(built("flow"), create("vanilla"))
    sample, back, again = round_trip(core, velocity, noise, steps=5)
    torch.testing.assert_close(back, noise)
    torch.testing.assert_close(again, sample)
    with pytest.raises(NotImplementedError, match="objective 'toy-flow-x0' has no deterministic sampler"):
        round_trip(NoisingCore(built(toy), create("vanilla")), velocity, noise, steps=5)


# ------------------------------------------------------------------------------------------- the registry


def test_unknown_name_is_one_line_with_a_suggestion_everywhere():
    expected = (
        "Unknown objective 'flw'. Did you mean 'flow'? Available: epsilon, flow, sample, v_prediction. "
        "An objective not registered can be given as 'module.path:ClassName'."
    )
    for call in (
        lambda: built("flw"),
        lambda: trainer_objective({"objective": "flw"}),
        lambda: trainer_objective({LEGACY_OBJECTIVE_KEY: "flw"}),
        lambda: resolve_sampler("flw", "auto"),
    ):
        with pytest.raises(objectives.UnknownObjectiveError) as err:
            call()
        assert str(err.value) == expected and isinstance(err.value, ValueError)
    with pytest.raises(objectives.UnknownObjectiveError, match="^Objective name must be a non-empty string"):
        objectives.get_class("")


def test_registered_plugin_is_accepted_by_the_factory(toy):
    assert trainer_objective({"objective": toy}) == toy
    assert resolve_sampler(toy, "auto", diffusion_default="ddpm") == "euler"
    with pytest.raises(
        ValueError, match=r"^sampler='heun' does not fit objective 'toy-flow-x0'; use euler\.$"
    ):
        resolve_sampler(toy, "heun")
    assert objectives.available()[toy].origin == "<in-process>"
    assert toy not in registry.available()  # the kinds keep separate names
    assert "knn" not in objectives.available()


def test_register_refuses_a_taken_name_and_an_incomplete_class():
    with pytest.raises(
        objectives.DuplicateObjectiveError, match="'flow' is already provided by immiscible-policy"
    ):
        objectives.register("flow")(FlowX0)

    class Half(Objective):
        samplers = ("euler",)

        def draw_timesteps(self, batch, device, generator):
            return torch.rand(batch)

    with pytest.raises(objectives.ObjectiveError, match=r"^Objective 'half' does not implement add_noise, "):
        objectives.register("half")(Half)
    assert "half" not in objectives.available()

    class NoSampler(FlowX0):
        samplers = ()

    with pytest.raises(objectives.ObjectiveError, match=r"declares samplers=\(\); declare a non-empty tuple"):
        objectives.register("no-sampler")(NoSampler)


def test_module_path_escape_hatch():
    obj = built("immiscible_policy.objectives.flow:RectifiedFlow")
    assert isinstance(obj, RectifiedFlow) and obj.timestep_scale == T
    assert obj.name == "immiscible_policy.objectives.flow:RectifiedFlow"  # what the config said
    assert trainer_objective({"objective": obj.name}) == obj.name
    assert resolve_sampler(obj.name, None) == "euler"
    with pytest.raises(
        objectives.ObjectiveError, match="not a subclass of immiscible_policy.objectives.Objective"
    ):
        built("torch:Tensor")
    with pytest.raises(objectives.ObjectiveImportError, match="failed to import: ModuleNotFoundError"):
        built("no_such_module_q:Thing")
    with pytest.raises(
        objectives.ObjectiveError, match=r"serves the objectives epsilon, v_prediction, sample"
    ):
        built("immiscible_policy.objectives.ddpm:DDPMObjective")


# ---------------------------------------------------------------- plugins from (fake) installed distributions

PLUGIN = """
import torch
from immiscible_policy.objectives import RectifiedFlow

class Reverse(RectifiedFlow):
    '''Flow with the path run the other way (t = 0 is noise).'''
    names = ("reverse",)

    def add_noise(self, x0, noise, t):
        return super().add_noise(noise, x0, t)

    def target(self, x0, noise, t):
        return x0 - noise
"""


def make_dist(root: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]):
    """An installed-looking distribution (dist-info + top-level modules) declaring objectives."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = [f"[{objectives.GROUP}]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, src in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(src))


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.DISABLE_ENV, raising=False)
    registry.refresh()
    yield tmp_path
    registry.refresh()
    for mod in ("fake_reverse", "fake_broken_obj", "fake_other_obj"):
        sys.modules.pop(mod, None)


def test_plugin_found_by_metadata_and_imported_only_when_created(fake_site):
    make_dist(fake_site, "fake-reverse", "0.3", {"reverse": "fake_reverse:Reverse"}, {"fake_reverse": PLUGIN})
    entry = objectives.available()["reverse"]
    assert (entry.origin, entry.version) == ("fake-reverse", "0.3")
    assert trainer_objective({"objective": "reverse"}) == "reverse"
    assert "fake_reverse" not in sys.modules  # listing and checking the name imported nothing
    obj = built("reverse")
    assert "fake_reverse" in sys.modules and obj.name == "reverse"
    x0, noise, t = torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0.0, 1.0])
    assert torch.equal(obj.add_noise(x0, noise, t), torch.tensor([[1.0] * 3, [0.0] * 3]))
    assert objectives.origin_of("reverse") == {"distribution": "fake-reverse", "version": "0.3"}
    assert "reverse" not in registry.available()


def test_broken_plugin_is_listed_and_fails_only_when_selected(fake_site):
    make_dist(
        fake_site,
        "fake-broken-obj",
        "0.1",
        {"broken": "fake_broken_obj:Nope"},
        {"fake_broken_obj": "import nonexistent_mod_xyz\n"},
    )
    listing = objectives.available()
    assert "broken" in listing and "flow" in listing
    assert "failed to import" in listing["broken"].error
    assert built("flow").name == "flow"  # the rest still works
    with pytest.raises(objectives.ObjectiveImportError) as err:
        built("broken")
    assert str(err.value) == (
        "Objective 'broken' (fake_broken_obj:Nope) failed to import: ModuleNotFoundError: No module named "
        "'nonexistent_mod_xyz' [from fake-broken-obj 0.1]"
    )
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


def test_one_name_from_two_distributions_names_both(fake_site):
    make_dist(fake_site / "a", "fake-one", "1.0", {"dup": "fake_reverse:Reverse"}, {"fake_reverse": PLUGIN})
    make_dist(
        fake_site / "b", "fake-two", "2.0", {"dup": "fake_other_obj:Reverse"}, {"fake_other_obj": PLUGIN}
    )
    sys.path[:0] = [str(fake_site / "a"), str(fake_site / "b")]
    try:
        registry.refresh()
        with pytest.raises(objectives.DuplicateObjectiveError) as err:
            built("dup")
        msg = str(err.value)
        assert msg.startswith("Objective name 'dup' is claimed by two distributions: ")
        assert "fake-one 1.0" in msg and "fake-two 2.0" in msg
        assert objectives.available()["dup"].error == msg
    finally:
        sys.path.remove(str(fake_site / "a"))
        sys.path.remove(str(fake_site / "b"))


def test_disable_plugins_keeps_the_built_in_objectives(fake_site, monkeypatch):
    make_dist(fake_site, "fake-reverse", "0.3", {"reverse": "fake_reverse:Reverse"}, {"fake_reverse": PLUGIN})
    monkeypatch.setenv(registry.DISABLE_ENV, "1")
    registry.refresh()
    assert sorted(objectives.available()) == sorted(BUILTIN)
    with pytest.raises(objectives.UnknownObjectiveError, match="^Unknown objective 'reverse'"):
        trainer_objective({"objective": "reverse"})


# ------------------------------------------------------------------------------ through the policy trainer


def cfg_of(*overrides: str):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_a_registered_objective_trains_and_samples_through_the_policy_trainer(tmp_path, monkeypatch, toy):
    from immiscible_policy.config_check import check_config
    from immiscible_policy.policy.model import DiffusionPolicy
    from immiscible_policy.policy.train import train_policy

    run = tmp_path / "run"
    cfg = cfg_of(
        "model=unet1d_sweep",
        "trainer.batch_size=32",
        "trainer.max_steps_per_epoch=2",
        "trainer.warmup_steps=1",
        "trainer.epochs=1",
        "trainer.eval_every_epochs=0",
        "trainer.eval_at_end=false",
        "trainer.progress=false",
        "trainer.num_inference_steps=4",
        "task.max_train_episodes=5",
        "task.dataset_path=embedded",
        f"trainer.objective={toy}",
        f"run_dir={run}",
    )
    assert check_config(cfg, "policy")["sampler"] == "euler"  # auto: the toy's own default
    train_policy(cfg, run)
    assert FlowX0.calls["target"] == 2  # one training pair per step, built by the toy
    recorded = json.loads((run / "checkpoints" / "last" / "config.json").read_text())["cfg"]["trainer"]
    assert recorded["objective"] == toy
    losses = [json.loads(x)["train_loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 1 and np.isfinite(losses).all()

    policy = DiffusionPolicy.from_checkpoint(run, device="cpu", seed=0)
    assert isinstance(policy.core.objective_impl, FlowX0) and policy.sampler == "euler"
    assert policy.core.objective_impl.timestep_scale == float(cfg.trainer.num_train_timesteps)
    stats = policy.normalizer.params["obs"]
    obs = np.tile((stats["min"] + stats["max"]) / 2, (policy.n_obs_steps, 1)).astype(np.float32)
    actions = policy.predict_action(obs)
    assert FlowX0.calls["sample"] == 1
    assert actions.shape == (policy.n_action_steps, policy.action_dim) and np.isfinite(actions).all()
    again = DiffusionPolicy.from_checkpoint(run, device="cpu", seed=0).predict_action(obs)
    np.testing.assert_array_equal(actions, again)  # a seeded policy samples the same actions


# ------------------------------------------------------------------------- the objective's own settings


class TunableFlowX0(FlowX0):
    """The toy with a setting of its own, given through ``trainer.objective_params`` (as an EDM objective
    would take its sigma_max)."""

    names = ("toy-tunable",)

    @classmethod
    def from_trainer(cls, name, *, num_train_timesteps, beta_schedule, **params):
        return cls(**{"timestep_scale": num_train_timesteps, **params})


def test_objective_params_reach_the_objective_from_the_command_line():
    from immiscible_policy.config_check import check_config
    from immiscible_policy.noising import build_core

    objectives.register("toy-tunable")(TunableFlowX0)
    try:
        cfg = cfg_of("trainer.objective=toy-tunable", "trainer.objective_params={timestep_scale: 7}")
        check_config(cfg, "policy")
        assert build_core(cfg.trainer, cfg.assigner).objective_impl.timestep_scale == 7.0
        plain = cfg_of("trainer.objective=toy-tunable")  # null: the objective's own defaults
        assert build_core(plain.trainer, plain.assigner).objective_impl.timestep_scale == float(
            plain.trainer.num_train_timesteps
        )
    finally:
        objectives.unregister("toy-tunable")


def test_objective_params_a_built_in_does_not_take_are_refused_in_one_line():
    from immiscible_policy.noising import build_core

    cfg = cfg_of("trainer.objective=flow", "trainer.objective_params={sigma_max: 80}")
    with pytest.raises(objectives.ObjectiveError) as err:
        build_core(cfg.trainer, cfg.assigner)
    line = str(err.value)
    assert "\n" not in line and "objective 'flow' takes no objective_params (got sigma_max)" in line, line


def test_objective_params_that_are_not_a_mapping_are_one_line():
    from immiscible_policy.config_check import check_config

    with pytest.raises(ValueError, match=r"^trainer.objective_params=3 is not a mapping of the objective's"):
        check_config(cfg_of("trainer.objective_params=3"), "policy")


def test_objective_params_are_checked_with_the_config_before_any_data():
    from immiscible_policy.config_check import check_config

    cfg = cfg_of("trainer.objective=flow", "trainer.objective_params={sigma_max: 80}")
    with pytest.raises(objectives.ObjectiveError, match=r"objective 'flow' takes no objective_params"):
        check_config(cfg, "policy")
