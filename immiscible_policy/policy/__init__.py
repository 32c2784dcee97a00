"""Diffusion policies: dataset, normaliser, ConditionalUnet1D, building, loading, training, rollouts."""

from immiscible_policy.policy.model import DiffusionPolicy, Policy

__all__ = ["DiffusionPolicy", "Policy"]
