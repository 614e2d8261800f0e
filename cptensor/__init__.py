"""cptensor: backend-agnostic CP (Candecomp/Parafac) tensor decompositions.

Works on NumPy arrays and PyTorch tensors (CPU or GPU) alike, dispatching on the arrays it
is given and returning results of the same backend, device and dtype.

>>> import numpy as np
>>> import cptensor as ct
>>> rng = np.random.default_rng(0)
>>> cp = ct.CPTensor(None, [rng.standard_normal((n, 3)) for n in (4, 5, 6)])
>>> x = ct.reconstruct(cp)
>>> x.shape
(4, 5, 6)
>>> bool(np.isclose(ct.norm(cp), np.linalg.norm(x)))
True
"""

from . import init, plot
from .algebra import arrange, cp_mode_product, fix_signs, inner, norm, normalize, permute
from .analysis import (
    congruence,
    core_consistency,
    degeneracy,
    explained_variance,
    matrix_rank_profile,
    multilinear_rank,
    rank_sweep,
    score,
)
from .cp import CPTensor, as_cp
from .errors import CPTensorError
from .fit import CPFit, fit_als, fit_gradient
from .operator import TensorOperator, is_operator
from .products import (
    fold,
    khatri_rao,
    kronecker,
    mode_product,
    mttkrp,
    mttkrp_all,
    multi_mode_product,
    unfold,
)
from .reconstruct import entries, fix_modes, reconstruct, reconstruct_unfolded
from .structured import BlockTensor, LowRankBlockTensor

__version__ = "0.1.0"

__all__ = [
    "CPFit",
    "CPTensor",
    "CPTensorError",
    "TensorOperator",
    "__version__",
    "arrange",
    "as_cp",
    "cp_mode_product",
    "entries",
    "fit_als",
    "fit_gradient",
    "fix_modes",
    "fix_signs",
    "fold",
    "init",
    "inner",
    "is_operator",
    "khatri_rao",
    "kronecker",
    "mode_product",
    "mttkrp",
    "mttkrp_all",
    "multi_mode_product",
    "norm",
    "normalize",
    "permute",
    "plot",
    "reconstruct",
    "reconstruct_unfolded",
    "unfold",
]

__all__ += [  # rank analysis and structured tensors
    "BlockTensor",
    "LowRankBlockTensor",
    "congruence",
    "core_consistency",
    "degeneracy",
    "explained_variance",
    "matrix_rank_profile",
    "multilinear_rank",
    "rank_sweep",
    "score",
]
