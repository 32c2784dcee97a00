"""Diffusion policies: dataset, normaliser, ConditionalUnet1D, training loop, rollouts."""

from immiscible_policy.policy.model import DiffusionPolicy, Policy

__all__ = ["DiffusionPolicy", "Policy"]
