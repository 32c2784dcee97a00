"""Diffusion policies: dataset, normaliser, ConditionalUnet1D, building, loading, training, rollouts."""

from immiscible_policy.policy.load import Policy
from immiscible_policy.policy.model import DiffusionPolicy

__all__ = ["DiffusionPolicy", "Policy"]
