"""Miscibility analysis: how much noised samples mix, per-timestep loss curves, DDIM bijectivity."""
