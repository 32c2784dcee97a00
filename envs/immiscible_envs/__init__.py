"""Gymnasium environments for evaluating immiscible_policy policies.

Importing this package registers ``immiscible/PushT-v0`` (gymnasium 1.x no longer auto-loads the
``gymnasium.envs`` entry point, so registration happens on import; :func:`register_envs` is idempotent).
"""

from immiscible_envs.pusht import PUSHT_ENV_ID, register_envs

__all__ = ["PUSHT_ENV_ID", "register_envs"]

register_envs()
