"""Example third-party plugin for immiscible-policy: the ``sinkhorn`` assigner (entropic OT on the device).

Importing this package is not needed to use the strategy: immiscible-policy finds it by name through the
``immiscible_policy.assigners`` entry point and imports it only when it is created.
"""

from immiscible_sinkhorn.assigner import SinkhornAssigner

__all__ = ["SinkhornAssigner"]
__version__ = "0.1.0"
