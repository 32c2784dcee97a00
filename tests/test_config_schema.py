"""The settings' dataclasses (config_schema/) are the one source of defaults, types and ranges.

What must hold: every field says what it means and its example passes its own check; Hydra composes each
preset from the dataclass defaults plus the preset's overrides, and no preset restates a value it already
inherits; a setting added to a dataclass is composed and checked with nothing else edited; run
directories written before the dataclasses existed still pass the check; the defaults that used to live
in second tables (the image encoder's, the sampler's ``auto``) come from the dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from immiscible_policy.cli._hydra import compose_train, config_dir, load_preset
from immiscible_policy.config_check import check_config
from immiscible_policy.config_schema import (
    MISSING,
    SCHEMAS,
    TRAINERS,
    ImageTrainerConfig,
    PolicyTrainerConfig,
    TrainerConfig,
    VisionConfig,
    check_section,
    check_value,
    defaults_of,
    rules_of,
    schema_node,
    setting,
    trainer_sampler,
)

CONFIGS = Path(config_dir())
FIXTURES = Path(__file__).parent / "fixtures"
PRESETS = [(g, p.stem) for g in ("trainer", "model", "task") for p in sorted((CONFIGS / g).glob("*.yaml"))]


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def schemas_with_sections():
    """Every schema dataclass, nested sections (fid, cfd, eval, vision) included."""
    seen: dict[type, None] = {}
    todo = list(SCHEMAS.values())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen[cls] = None
            todo += [r.section for r in rules_of(cls).values() if r.section is not None]
    return list(seen)


@pytest.mark.parametrize("cls", schemas_with_sections(), ids=lambda c: c.__name__)
def test_every_field_is_documented_and_its_example_passes_its_own_check(cls):
    assert cls.what and cls.__doc__
    for name, rule in rules_of(cls).items():
        assert rule.doc.strip(), f"{cls.__name__}.{name} has no doc"
        if rule.kind in ("section", "group"):
            continue
        check_value(f"x.{name}", rule.example, rule)  # the "e.g." of its own error message is valid
        default = defaults_of(cls)[name]
        if default != MISSING:
            check_value(f"x.{name}", default, rule)


def test_every_schema_is_registered_with_hydra():
    stored = ConfigStore.instance().repo["schema"]
    for name, cls in SCHEMAS.items():
        node = stored[f"{name}.yaml"].node
        assert OmegaConf.to_container(node) == schema_node(cls)


@pytest.mark.parametrize(
    "overrides, group, cls",
    [
        ([], "trainer", PolicyTrainerConfig),
        (["task=digits"], "trainer", ImageTrainerConfig),
        (["task=pusht", "trainer=image_cpu"], "trainer", ImageTrainerConfig),
    ],
)
def test_the_base_presets_are_the_dataclass_defaults(overrides, group, cls):
    assert OmegaConf.to_container(cfg_of(*overrides)[group]) == schema_node(cls) == defaults_of(cls)


def test_the_image_trainer_restates_only_what_differs():
    """A subclass re-defaults a shared setting and keeps its range and meaning (one rule per setting)."""
    shared, image = rules_of(TrainerConfig), rules_of(ImageTrainerConfig)
    for name, rule in shared.items():  # the example (from the default when not given) may differ
        assert dataclasses.replace(image[name], example=None) == dataclasses.replace(rule, example=None), name
    base, own = defaults_of(TrainerConfig), defaults_of(ImageTrainerConfig)
    redefined = set(ImageTrainerConfig.__annotations__) & set(base)
    assert redefined and all(own[k] != base[k] for k in redefined)  # never a restated equal value


@pytest.mark.parametrize("group, name", PRESETS, ids=lambda x: x)
def test_a_preset_writes_only_what_differs(group, name):
    """Each value a preset writes differs from what it inherits; keys it adds (a task family's own, a
    section) are its own."""
    raw = yaml.safe_load((CONFIGS / group / f"{name}.yaml").read_text()) or {}
    entries = raw.pop("defaults", [])
    inherited = OmegaConf.create({})
    for entry in entries:
        if isinstance(entry, str) and entry.startswith("/schema/"):
            schema, _, package = entry.removeprefix("/schema/").partition("@")
            node = schema_node(SCHEMAS[schema])
            inherited = OmegaConf.merge(inherited, node if package == "_here_" else {package: node})
        elif isinstance(entry, str) and entry != "_self_":
            inherited = OmegaConf.merge(inherited, load_preset(group, entry))
    inherited = OmegaConf.to_container(inherited)

    def restated(values, base, prefix=""):
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                yield from restated(value, base[key], f"{prefix}{key}.")
            elif key in base and base[key] == value:
                yield f"{prefix}{key}={value!r}"

    assert not list(restated(raw, inherited)), f"{group}/{name}.yaml restates inherited values"


@pytest.mark.parametrize("group, name", [p for p in PRESETS if p[0] != "task"], ids=lambda x: x)
def test_load_preset_is_what_hydra_composes(group, name):
    task = (
        "digits" if (group == "model" and "2d" in name) or name in ("image_cpu", "ddpm_cifar10") else "pusht"
    )
    composed = OmegaConf.to_container(cfg_of(f"task={task}", f"{group}={name}")[group])
    assert OmegaConf.to_container(load_preset(group, name)) == composed


def test_composition_keeps_values_as_written_for_the_check():
    """Hydra composes plain nodes: a bad value reaches check_config as written (a typed node would turn
    ``yes`` into true, or fail inside Hydra with a multi-line error)."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose_train(["trainer.progress=yes", "trainer.lr=abc"])
    assert cfg.trainer.progress == "yes" and cfg.trainer.lr == "abc"
    with pytest.raises(ValueError, match=r"^trainer\.lr=abc is not a number"):  # lr comes first
        check_config(cfg)


def test_adding_a_setting_is_one_field():
    """The worked example of docs/cli.md: one field gives the default, the composed node and the check."""

    @dataclasses.dataclass(kw_only=True)
    class WithWarmupRatio(PolicyTrainerConfig):
        warmup_ratio: float = setting(0.1, "warm-up as a share of all steps", lo=0, hi=1)

    assert schema_node(WithWarmupRatio)["warmup_ratio"] == 0.1
    values = {**defaults_of(WithWarmupRatio), "warmup_ratio": 1.5}
    with pytest.raises(ValueError) as err:
        check_section("trainer", values, WithWarmupRatio)
    assert str(err.value) == (
        "trainer.warmup_ratio=1.5 is out of range; use a number >= 0 and < 1, e.g. trainer.warmup_ratio=0.1."
    )
    with pytest.raises(ValueError, match=r"^trainer\.warmup_ratios is not a setting .*did you mean "):
        check_section("trainer", {**values, "warmup_ratio": 0.2, "warmup_ratios": 1}, WithWarmupRatio)


def test_the_objective_is_any_name_the_noising_core_accepts():
    rule = rules_of(PolicyTrainerConfig)["objective"]
    check_value("trainer.objective", "immiscible_policy.objectives.flow:RectifiedFlow", rule)  # not a list
    with pytest.raises(ValueError, match=r"^trainer\.objective=flw is not supported \(did you mean flow\?\)"):
        check_value("trainer.objective", "flw", rule)


@pytest.mark.parametrize(
    "run", ["legacy_policy_ckpt", "main_runs/policy", "main_runs/image"], ids=lambda r: r.replace("/", "-")
)
def test_run_configs_written_before_the_schema_still_pass(run):
    """A run directory's recorded config (older key sets, the objective's former name) passes the check
    with the objective it was trained with."""
    recorded = json.loads((FIXTURES / run / "config.json").read_text())["cfg"]
    out = check_config(OmegaConf.create(recorded))
    trainer = recorded["trainer"]
    assert out["objective"] == trainer.get("objective", trainer.get("prediction_type"))
    assert out["sampler"] == trainer["sampler"]


def test_auto_sampler_is_decided_by_the_trainer_schema():
    """``trainer.sampler=auto``: each trainer's ``diffusion_sampler`` for diffusion objectives, the
    objective's own for flow; the policy builder and the image side ask the schema, so they agree."""
    from immiscible_policy.noising import resolve_sampler
    from immiscible_policy.policy.build import policy_sampler

    assert {k: c.diffusion_sampler for k, c in TRAINERS.items()} == {"policy": "ddpm", "image": "ddim"}
    for kind in TRAINERS:
        assert trainer_sampler({"sampler": "auto"}, "epsilon", kind) == TRAINERS[kind].diffusion_sampler
        assert trainer_sampler({"sampler": "auto"}, "flow", kind) == "euler"
        assert check_config(cfg_of("task=digits" if kind == "image" else "task=pusht"))["sampler"] == (
            TRAINERS[kind].diffusion_sampler
        )
    for objective in ("epsilon", "flow"):
        assert policy_sampler({"sampler": "auto"}, objective) == trainer_sampler(
            {"sampler": "auto"}, objective, "policy"
        )
        assert resolve_sampler(objective, "auto") == trainer_sampler({"sampler": "auto"}, objective, "image")


def test_the_image_encoder_fills_absent_keys_from_the_schema():
    from immiscible_policy.policy.build import build_encoder

    defaults = VisionConfig()
    encoder = build_encoder({})
    assert (encoder.crop, encoder.feature_dim) == (defaults.crop, defaults.feature_dim)
    assert OmegaConf.to_container(cfg_of("task=pusht_image", "model=dp_image").model.vision) == defaults_of(
        VisionConfig
    )
