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

from .algebra import arrange, cp_mode_product, fix_signs, inner, norm, normalize, permute
from .cp import CPTensor
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

__version__ = "0.1.0"

__all__ = [
    "CPTensor",
    "TensorOperator",
    "__version__",
    "arrange",
    "cp_mode_product",
    "entries",
    "fix_modes",
    "fix_signs",
    "fold",
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
    "reconstruct",
    "reconstruct_unfolded",
    "unfold",
]
