"""Rank analysis: what is the CP rank of this tensor, and how good is this CP model?

* :func:`score`, :func:`congruence` — compare decompositions up to permutation, scaling
  and sign (Tensor Toolbox semantics, optimal matching).
* :func:`core_consistency`, :func:`degeneracy`, :func:`explained_variance` — diagnose
  one fitted model.
* :func:`multilinear_rank`, :func:`matrix_rank_profile` — ranks of unfoldings and of
  stacks of matrices (LoRA-style low-rank pairs accepted as such).
* :func:`rank_sweep` — fit every rank of a range from several starts and recommend one.

All accept dense arrays (NumPy, torch) and, where they read the data, the structured
tensors of :mod:`cptensor.structured` without densifying them.
"""

from .diagnostics import (
    DEGENERACY_THRESHOLD,
    ExplainedVariance,
    core_consistency,
    degeneracy,
    explained_variance,
)
from .multilinear import MultilinearRank, RankProfile, matrix_rank_profile, multilinear_rank
from .score import Score, congruence, congruence_matrix, score
from .sweep import RankSweep, rank_sweep

__all__ = [
    "DEGENERACY_THRESHOLD",
    "ExplainedVariance",
    "MultilinearRank",
    "RankProfile",
    "RankSweep",
    "Score",
    "congruence",
    "congruence_matrix",
    "core_consistency",
    "degeneracy",
    "explained_variance",
    "matrix_rank_profile",
    "multilinear_rank",
    "rank_sweep",
    "score",
]
