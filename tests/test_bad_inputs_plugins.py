"""Broken plugins and bad strategy options give one actionable line, and never hide the other strategies."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from immiscible_policy import registry
from immiscible_policy.cli import assigners as assigners_cli

FAKE_MODULES = ("fake_exit", "fake_raise", "fake_needs", "fake_interrupt")


def _dist(root, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """An installed-looking distribution (dist-info + top-level modules) under ``root``."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = ["[immiscible_policy.assigners]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, src in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(src))


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(registry.DISABLE_ENV, raising=False)
    registry.refresh()
    yield tmp_path
    registry.refresh()
    for mod in FAKE_MODULES:
        sys.modules.pop(mod, None)


def test_plugin_calling_sys_exit_on_import_is_listed_as_broken(site, capsys):
    _dist(site, "fake-exit", {"exiter": "fake_exit:Exiter"}, {"fake_exit": "import sys\nsys.exit(3)\n"})
    _dist(
        site,
        "fake-raise",
        {"raiser": "fake_raise:Raiser"},
        {"fake_raise": "raise RuntimeError('first line\\nsecond line')\n"},
    )
    assert assigners_cli.main([]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in ("vanilla", "linear", "knn", "c2ot"):  # the working strategies are all listed
        assert any(line.startswith(f"{name} ") for line in lines), out
    exiter = next(line for line in lines if line.startswith("exiter "))
    assert (
        "ERROR: Assigner 'exiter' (fake_exit:Exiter) failed to import: SystemExit: 3 [from fake-exit 1.0]"
        in exiter
    )
    raiser = next(line for line in lines if line.startswith("raiser "))
    assert "failed to import: RuntimeError: first line second line [from fake-raise 1.0]" in raiser

    assert assigners_cli.main(["--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert "SystemExit: 3" in rows["exiter"]["error"] and rows["knn"]["error"] is None

    # selecting it is a one-line error naming the distribution, never an exit of the host program
    with pytest.raises(registry.AssignerImportError) as info:
        registry.create("exiter")
    assert str(info.value) == (
        "Assigner 'exiter' (fake_exit:Exiter) failed to import: SystemExit: 3 [from fake-exit 1.0]"
    )


def test_keyboard_interrupt_during_plugin_import_is_not_swallowed(site):
    _dist(
        site,
        "fake-interrupt",
        {"interrupter": "fake_interrupt:X"},
        {"fake_interrupt": "raise KeyboardInterrupt\n"},
    )
    with pytest.raises(KeyboardInterrupt):
        registry.create("interrupter")


def test_bad_option_value_names_strategy_option_and_valid_options():
    """``++assigner.params.k=abc`` used to say only "invalid literal for int() ..."."""
    with pytest.raises(registry.AssignerError) as info:
        registry.create_from_config({"name": "knn", "params": {"k": "abc"}})
    assert str(info.value) == (
        "Assigner 'knn' rejected its options (k='abc'): ValueError: invalid literal for int() with base 10: "
        "'abc'; its options are: k: int = 4, space: str = 'full', max_chunk_elements: int = 1048576."
    )
    assert isinstance(info.value, ValueError)  # so the CLIs print it as `error: ...`, exit 2


def test_constructor_type_error_is_one_line(site):
    src = """
    from immiscible_policy.assigners.base import Assigner

    class Needs(Assigner):
        name = "needs"
        def __init__(self, radius: float, *, mode: str = "a"):
            super().__init__(radius=float(radius), mode=mode)
    """
    _dist(site, "fake-needs", {"needs": "fake_needs:Needs"}, {"fake_needs": src})
    with pytest.raises(registry.AssignerError) as info:
        registry.create("needs")
    msg = str(info.value)
    assert msg.startswith("Assigner 'needs' rejected its options (no options): TypeError: ")
    assert "missing 1 required positional argument: 'radius'" in msg
    assert msg.endswith("its options are: radius: float, mode: str = 'a'.")
    with pytest.raises(registry.AssignerError, match=r"rejected its options \(radius='wide'\): ValueError"):
        registry.create("needs", radius="wide")


def test_own_one_line_errors_pass_through_unchanged():
    with pytest.raises(registry.AssignerError) as info:
        registry.create("knn", kk=3)
    assert str(info.value).startswith("Assigner 'knn' got unknown option(s) 'kk'")


def test_module_path_still_works_from_the_training_config():
    """The user typed it on the training command line: no opt-in needed there."""
    a = registry.create_from_config(
        {"name": "immiscible_policy.assigners.knn:KNNAssigner", "params": {"k": 2}}
    )
    assert type(a).__name__ == "KNNAssigner" and a.k == 2
