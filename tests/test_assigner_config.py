"""Assigner options are captured from the constructor, so checkpoints record every one of them."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from immiscible_policy import registry
from immiscible_policy.assigners.base import Assigner, Pairing
from immiscible_policy.assigners.knn import KNNAssigner
from immiscible_policy.testing import ConformanceError, check_assigner

# One non-default construction per built-in (every option changed where the strategy allows it).
NON_DEFAULT: dict[str, dict] = {
    "vanilla": {},
    "linear": {
        "cost": "sqeuclidean",
        "space": "pool:2",
        "quantize": "fp16",
        "distributed": "global",
        "solver": "scipy",
    },
    "knn": {"k": 7, "space": "pool:4", "max_chunk_elements": 4096},
    "knn-pool": {"ratio": 3, "n_neighbors": 5, "space": "pool:2", "distributed": "global"},
    "scale": {"s": 0.5},
    "c2ot": {
        "cost": "sqeuclidean",
        "weight": 1.5,
        "target_r": 0.2,
        "condition_cost": "sqeuclidean",
        "space": "pool:2",
        "quantize": "fp16",
        "distributed": "global",
        "solver": "scipy",
    },
}


def builtin_names() -> list[str]:
    return sorted(n for n, e in registry.available().items() if e.origin == registry.BUILTIN_DIST)


def signature_defaults(cls: type) -> dict:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p.default for p in params}


def test_every_builtin_has_a_non_default_case():
    assert set(builtin_names()) == set(NON_DEFAULT)


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_builtin_config_is_the_full_signature(name):
    cls = registry.get_class(name)
    defaults = signature_defaults(cls)
    assert all(v is not inspect.Parameter.empty for v in defaults.values())
    for given in ({}, NON_DEFAULT[name]):
        a = registry.create(name, **given)
        expected = {**defaults, **given}
        assert a.config == {"name": name, "params": expected}
        assert list(a.params) == list(defaults)  # signature order
        again = registry.create(name, **a.config["params"])
        assert type(again) is cls and again.config == a.config
        assert registry.create_from_config(json.loads(json.dumps(a.config))).config == a.config


def test_positional_construction_is_captured_too():
    assert KNNAssigner(6, "pool:2").params == {"k": 6, "space": "pool:2", "max_chunk_elements": 2**20}


def test_signature_and_option_names_are_kept():
    assert KNNAssigner.option_names() == ["k", "space", "max_chunk_elements"]
    assert str(inspect.signature(KNNAssigner.__init__)).startswith("(self, k: 'int' = 4")
    assert repr(registry.create("knn", k=8)) == "KNNAssigner(k=8, space='full', max_chunk_elements=1048576)"


class Forgets(Assigner):
    """Passes only one of its options to super().__init__: the other used to drop out of checkpoints."""

    name = "forgets"

    def __init__(self, gain: float = 1.0, mode: str = "a") -> None:
        super().__init__(gain=gain)
        self.gain, self.mode = gain, mode

    def pair(self, x0, noise, *, generator=None):
        return Pairing(x0, noise * self.gain)


class Silent(Assigner):
    """Calls super().__init__() without arguments."""

    name = "silent"

    def __init__(self, radius: float = 0.5, *, tag: str = "x") -> None:
        super().__init__()
        self.radius = radius

    def pair(self, x0, noise, *, generator=None):
        return Pairing(x0, noise)


class NoSuperCall(Assigner):
    name = "no-super"

    def __init__(self, depth: int = 3) -> None:
        self.depth = depth

    def pair(self, x0, noise, *, generator=None):
        return Pairing(x0, noise)


class Normalises(Assigner):
    """The older plugin style (README, plugins/immiscible-sinkhorn): explicit, normalised values."""

    name = "normalises"

    def __init__(self, epsilon: float = 0.05, n_iters: int = 50) -> None:
        super().__init__(epsilon=float(epsilon), n_iters=int(n_iters))
        self.epsilon, self.n_iters = float(epsilon), int(n_iters)

    def pair(self, x0, noise, *, generator=None):
        return Pairing(x0, noise)


class Kwargs(Assigner):
    name = "kwargs"

    def __init__(self, a: int = 1, **extra) -> None:
        super().__init__(a=a, **extra)

    def pair(self, x0, noise, *, generator=None):
        return Pairing(x0, noise)


class MyKNN(KNNAssigner):
    """A subclass of a built-in: re-created through its own signature, so that is what it records."""

    name = "my-knn"

    def __init__(self, k: int = 2, margin: float = 0.0) -> None:
        super().__init__(k=k, space="full")
        self.margin = margin


def test_forgotten_option_is_still_recorded():
    assert Forgets().config == {"name": "forgets", "params": {"gain": 1.0, "mode": "a"}}
    assert Forgets(2.0, mode="b").params == {"gain": 2.0, "mode": "b"}


def test_super_init_without_arguments_captures_everything():
    assert Silent().params == {"radius": 0.5, "tag": "x"}
    assert Silent(radius=1.0, tag="y").params == {"radius": 1.0, "tag": "y"}
    assert NoSuperCall(depth=5).params == {"depth": 5}


def test_plugin_style_explicit_values_win():
    a = Normalises(epsilon=1, n_iters=10.0)
    assert a.params == {"epsilon": 1.0, "n_iters": 10}
    assert type(a.params["epsilon"]) is float and type(a.params["n_iters"]) is int
    assert Normalises().params == {"epsilon": 0.05, "n_iters": 50}


def test_var_keyword_options_are_flattened():
    assert Kwargs(b=2).params == {"a": 1, "b": 2}
    assert Kwargs(a=3, c="z").params == {"a": 3, "c": "z"}


def test_subclass_of_a_strategy_records_its_own_signature():
    a = MyKNN(k=3, margin=0.1)
    assert a.params == {"k": 3, "margin": 0.1}
    assert MyKNN(**a.params).params == a.params
    assert KNNAssigner(k=5).params == {"k": 5, "space": "full", "max_chunk_elements": 2**20}


def test_registered_plugin_style_round_trips_through_the_registry():
    for cls in (Forgets, Silent, Normalises):
        registry.register()(cls)
    try:
        for cls in (Forgets, Silent, Normalises):
            a = registry.create(cls.name)
            b = registry.create_from_config(json.loads(json.dumps(a.config)))
            assert type(b) is cls and b.config == a.config
            check_assigner(a, shapes=((4, 3),))
    finally:
        for cls in (Forgets, Silent, Normalises):
            registry.unregister(cls.name)


def test_sinkhorn_plugin_records_the_same_config_as_before():
    pytest.importorskip("immiscible_sinkhorn")
    from immiscible_sinkhorn.assigner import SinkhornAssigner

    a = SinkhornAssigner(epsilon=1, n_iters=10)
    assert a.params == {"epsilon": 1.0, "n_iters": 10, "space": "full", "distributed": "local"}
    assert type(a.params["epsilon"]) is float
    check_assigner(a, shapes=((4, 3),))


def test_conformance_kit_checks_the_recorded_config():
    class Overwrites(Assigner):
        name = "overwrites"

        def __init__(self, a: int = 1, b: int = 2) -> None:
            super().__init__()
            self.b = b

        def pair(self, x0, noise, *, generator=None):
            return Pairing(x0, noise)

    class Opaque(Assigner):
        name = "opaque"

        def __init__(self, fn=torch.tanh) -> None:
            super().__init__()

        def pair(self, x0, noise, *, generator=None):
            return Pairing(x0, noise)

    class Drifts(Assigner):
        name = "drifts"

        def __init__(self, s: float = 1.0) -> None:
            super().__init__(s=s * 2)  # recorded value is not the one given: re-creation doubles it

        def pair(self, x0, noise, *, generator=None):
            return Pairing(x0, noise)

    broken = Overwrites()
    broken._params = {"a": 1}  # what a strategy recording options by hand could end up with
    with pytest.raises(ConformanceError, match=r"miss constructor option\(s\) \['b'\]"):
        check_assigner(broken, shapes=((4, 3),))
    with pytest.raises(ConformanceError, match="JSON-serialisable"):
        check_assigner(Opaque(), shapes=((4, 3),))
    with pytest.raises(ConformanceError, match="re-created from its config, the config changed"):
        check_assigner(Drifts(), shapes=((4, 3),))
