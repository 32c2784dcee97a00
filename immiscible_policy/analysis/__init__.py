"""Miscibility analysis: how much noised samples mix, per-timestep loss curves, DDIM bijectivity, modes.

``runs`` applies them to data sets and checkpoints (each run's own task family and split), ``plots``
draws the figures ``immiscible-analyze`` writes.
"""
