"""Fitting CP models: alternating least squares and all-at-once gradient optimisation.

>>> import cptensor as ct
>>> from cptensor.fit import fit_als
>>> x = ct.reconstruct(ct.init.random((5, 6, 7), 2, seed=0))
>>> fit_als(x, 2, seed=0).rel_error < 1e-6
True
"""

from .als import fit_als
from .gradient import fit_gradient
from .result import CPFit, FitState

__all__ = ["CPFit", "FitState", "fit_als", "fit_gradient"]
