"""Noise-assignment strategies. Import concrete ones through :mod:`immiscible_policy.registry`."""

from immiscible_policy.assigners.base import Assigner, Pairing

__all__ = ["Assigner", "Pairing"]
