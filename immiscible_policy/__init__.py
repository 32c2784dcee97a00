"""immiscible_policy: immiscible diffusion training for diffusion policies and image models.

Importing the package loads no plugin (see :mod:`immiscible_policy.registry`).
"""

from immiscible_policy.assigners.base import Assigner, Pairing
from immiscible_policy.pairing import NoisePairer, pair_noise
from immiscible_policy.registry import available, create, register

__version__ = "0.1.0"
__all__ = [
    "Assigner",
    "NoisePairer",
    "Pairing",
    "available",
    "create",
    "pair_noise",
    "register",
    "__version__",
]
