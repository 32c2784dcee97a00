"""Registry behaviour tested by its error text, with fake distributions placed on sys.path."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from immiscible_policy import registry
from immiscible_policy.assigners.base import Assigner, Pairing


def make_dist(root, dist, version, entry_points: dict[str, str], modules: dict[str, str] | None = None):
    """Write an installed-looking distribution (dist-info + modules) under ``root``."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[immiscible_policy.assigners]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, src in (modules or {}).items():
        (root / f"{name}.py").write_text(textwrap.dedent(src))


GOOD = """
import torch
from immiscible_policy.assigners.base import Assigner, Pairing

class Flip(Assigner):
    name = "flip"
    description = "negates the noise"
    def __init__(self, gain: float = 1.0):
        super().__init__(gain=gain)
    def pair(self, x0, noise, *, generator=None):
        return Pairing(x0, -noise)
"""


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    yield tmp_path
    registry.refresh()
    for mod in ("fake_flip", "fake_broken", "fake_other"):
        sys.modules.pop(mod, None)


def test_builtins_listed_without_import():
    names = registry.available()
    for n in ("vanilla", "linear", "knn", "knn-pool", "scale"):
        assert names[n].origin == "immiscible-policy"


def test_unknown_name_suggests_and_lists():
    with pytest.raises(registry.UnknownAssignerError) as exc:
        registry.create("knnn")
    msg = str(exc.value)
    assert "Unknown assigner 'knnn'. Did you mean 'knn'?" in msg
    assert "Available: " in msg and "linear" in msg and "\n" not in msg


def test_unknown_option_lists_valid_ones():
    with pytest.raises(registry.AssignerError, match=r"unknown option\(s\) 'kk'; its options are: k, space"):
        registry.create("knn", kk=3)


def test_plugin_found_by_name_and_imported_lazily(fake_site):
    make_dist(fake_site, "fake-flip", "1.2", {"flip": "fake_flip:Flip"}, {"fake_flip": GOOD})
    entry = registry.available()["flip"]
    assert (entry.origin, entry.version) == ("fake-flip", "1.2")
    assert "fake_flip" not in sys.modules  # listing imported nothing
    a = registry.create("flip", gain=2.0)
    assert a.config == {"name": "flip", "params": {"gain": 2.0}}
    noise = torch.randn(3, 2)
    assert torch.equal(a.pair(torch.zeros(3, 2), noise).noise, -noise)


def test_broken_plugin_listed_and_fails_only_when_used(fake_site):
    make_dist(
        fake_site,
        "fake-broken",
        "0.1",
        {"broken": "fake_broken:Nope"},
        {"fake_broken": "import nonexistent_mod_xyz\n"},
    )
    listing = registry.available()
    assert "broken" in listing and "knn" in listing
    assert "failed to import" in listing["broken"].error
    registry.create("knn", k=2)  # the rest still works
    with pytest.raises(registry.AssignerImportError) as exc:
        registry.create("broken")
    msg = str(exc.value)
    assert "Assigner 'broken' (fake_broken:Nope) failed to import: ModuleNotFoundError" in msg
    assert "[from fake-broken 0.1]" in msg
    assert isinstance(exc.value.__cause__, ModuleNotFoundError)


def test_duplicate_name_across_distributions_names_both(fake_site):
    make_dist(fake_site / "a", "fake-one", "1.0", {"dup": "fake_flip:Flip"}, {"fake_flip": GOOD})
    make_dist(fake_site / "b", "fake-two", "2.0", {"dup": "fake_other:Flip"}, {"fake_other": GOOD})
    sys.path[:0] = [str(fake_site / "a"), str(fake_site / "b")]
    try:
        registry.refresh()
        with pytest.raises(registry.DuplicateAssignerError) as exc:
            registry.create("dup")
        msg = str(exc.value)
        assert "claimed by two distributions" in msg and "fake-one 1.0" in msg and "fake-two 2.0" in msg
        assert registry.available()["dup"].error == msg
    finally:
        sys.path.remove(str(fake_site / "a"))
        sys.path.remove(str(fake_site / "b"))


def test_module_path_escape_hatch():
    a = registry.create("immiscible_policy.assigners.knn:KNNAssigner", k=3)
    assert a.k == 3
    with pytest.raises(registry.AssignerImportError, match="failed to import"):
        registry.create("no_such_module_q:Thing")
    with pytest.raises(
        registry.AssignerError, match="not a subclass of immiscible_policy.assigners.Assigner"
    ):
        registry.create("torch:Tensor")


def test_register_decorator_and_collision():
    @registry.register("half-noise")
    class Half(Assigner):
        def pair(self, x0, noise, *, generator=None):
            return Pairing(x0, noise * 0.5)

    try:
        assert registry.create("half-noise").name == "half-noise"
        assert registry.available()["half-noise"].origin == "<in-process>"
        with pytest.raises(
            registry.DuplicateAssignerError, match="'knn' is already provided by immiscible-policy"
        ):

            @registry.register("knn")
            class Other(Assigner):
                pass
    finally:
        registry.unregister("half-noise")


def test_create_from_config_rejects_stray_keys():
    a = registry.create_from_config({"name": "knn", "params": {"k": 5}})
    assert a.k == 5
    with pytest.raises(registry.AssignerError, match="put strategy options under 'params'"):
        registry.create_from_config({"name": "knn", "k": 5})


def test_disable_plugins_env_keeps_builtins(fake_site, monkeypatch):
    make_dist(fake_site, "fake-flip", "1.2", {"flip": "fake_flip:Flip"}, {"fake_flip": GOOD})
    monkeypatch.setenv("IMMISCIBLE_DISABLE_PLUGINS", "1")
    registry.refresh()
    names = registry.available()
    assert "flip" not in names and "knn" in names
    with pytest.raises(registry.UnknownAssignerError):
        registry.create("flip")


def test_import_package_loads_no_plugin():
    code = (
        "import sys, immiscible_policy; "
        "immiscible_policy.available(); "
        "print(sorted(m for m in sys.modules if m.startswith('immiscible_policy.assigners.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "knn" not in out and "linear" not in out


def test_cli_lists_builtins():
    out = subprocess.run(
        [sys.executable, "-m", "immiscible_policy.cli.assigners"], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[0].split() == ["name", "origin", "scope", "description"]
    line = next(ln for ln in out.splitlines() if ln.startswith("linear "))
    assert "batch" in line and "immiscible-policy" in line
