"""The example third-party plugin (plugins/immiscible-sinkhorn), installed, is found by name.

Proves the plugin path end to end: entry-point metadata -> registry listing -> lazy import on create ->
the ``immiscible-assigners`` CLI, and that ``IMMISCIBLE_DISABLE_PLUGINS=1`` hides it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

from immiscible_policy import registry

if find_spec("immiscible_sinkhorn") is None:
    pytest.skip(
        "install plugins/immiscible-sinkhorn: pip install -e plugins/immiscible-sinkhorn",
        allow_module_level=True,
    )

CLI = [sys.executable, "-m", "immiscible_policy.cli.assigners"]


@pytest.fixture(autouse=True)
def _plugins_enabled(monkeypatch):
    monkeypatch.delenv(registry.DISABLE_ENV, raising=False)
    registry.refresh()
    yield
    registry.refresh()


def _run(args, disable_plugins=False):
    env = {k: v for k, v in os.environ.items() if k != registry.DISABLE_ENV}
    if disable_plugins:
        env[registry.DISABLE_ENV] = "1"
    return subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=120)


def test_registry_lists_sinkhorn_from_the_plugin_distribution():
    entry = registry.available()["sinkhorn"]
    assert entry.origin == "immiscible-sinkhorn"
    assert entry.target == "immiscible_sinkhorn.assigner:SinkhornAssigner"
    assert entry.version


def test_create_by_name_returns_the_plugin_class():
    from immiscible_sinkhorn.assigner import SinkhornAssigner

    assigner = registry.create("sinkhorn", epsilon=0.1)
    assert type(assigner) is SinkhornAssigner
    assert (assigner.name, assigner.scope) == ("sinkhorn", "batch")
    assert assigner.params["epsilon"] == 0.1
    assert type(registry.create_from_config(assigner.config)) is SinkhornAssigner


def test_create_passes_option_errors_through():
    with pytest.raises(registry.AssignerError, match="got unknown option"):
        registry.create("sinkhorn", k=3)
    with pytest.raises(ValueError, match="sinkhorn: epsilon must be a positive finite number"):
        registry.create("sinkhorn", epsilon=-1.0)


def test_cli_table_lists_sinkhorn_with_batch_scope():
    proc = _run([])
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines()]
    row = next((cols for cols in lines if cols and cols[0] == "sinkhorn"), None)
    assert row is not None, proc.stdout
    assert row[1] == "immiscible-sinkhorn" and "batch" in row[2:4], row


def test_cli_json_lists_sinkhorn_with_batch_scope():
    proc = _run(["--json"])
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    row = rows["sinkhorn"]
    assert row["origin"] == "immiscible-sinkhorn"
    assert row["scope"] == "batch"
    assert row["error"] is None
    assert row["description"]


def test_disable_plugins_hides_sinkhorn_from_the_cli():
    proc = _run(["--json"], disable_plugins=True)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert "sinkhorn" not in rows
    assert "linear" in rows  # built-ins stay


def test_disable_plugins_makes_sinkhorn_unknown():
    code = (
        "from immiscible_policy import registry\n"
        "try:\n"
        "    registry.create('sinkhorn')\n"
        "except registry.UnknownAssignerError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('CREATED')\n"
    )
    env = dict(os.environ, **{registry.DISABLE_ENV: "1"})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Unknown assigner 'sinkhorn'."), proc.stdout
    assert "sinkhorn" not in proc.stdout.split("Available:", 1)[1]
