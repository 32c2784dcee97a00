"""Gymnasium environments for evaluating immiscible_policy policies.

Importing this package registers ``immiscible/PushT-v0`` and ``immiscible/Robomimic-v0`` (gymnasium 1.x no
longer auto-loads the ``gymnasium.envs`` entry point, so registration happens on import; both
``register_envs`` are idempotent). robosuite is imported only when a robomimic env is created.
"""

from immiscible_envs.pusht import PUSHT_ENV_ID, register_envs
from immiscible_envs.robomimic import ROBOMIMIC_ENV_ID
from immiscible_envs.robomimic import register_envs as _register_robomimic

__all__ = ["PUSHT_ENV_ID", "ROBOMIMIC_ENV_ID", "register_envs"]

register_envs()
_register_robomimic()
