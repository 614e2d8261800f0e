"""The ``TensorOperator`` protocol: tensors that are never held densely.

A structured tensor (a stream of blocks read from disk, a stack of low-rank blocks, ...)
takes part in fitting and analysis by implementing the few contractions CP algorithms
need. ``fit_als``, ``norm``, ``inner``, ``mttkrp``, ``mttkrp_all``, ``core_consistency``
and ``rank_sweep`` accept such an object wherever they accept a dense array.

An implementation sets the class attribute ``__cptensor_operator__ = True`` and provides
the members of :class:`TensorOperator`. Concrete operators live in
``cptensor.structured``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ._backend import Array


@runtime_checkable
class TensorOperator(Protocol):
    """What a structured tensor provides so that CP algorithms can use it.

    All returned arrays are of the operator's backend, device and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import TensorOperator
    >>> from cptensor.structured import LowRankBlockTensor
    >>> rng = np.random.default_rng(0)
    >>> pairs = {(0,): (rng.standard_normal((4, 2)), rng.standard_normal((3, 2)))}
    >>> op = LowRankBlockTensor((4, 3, 1), (0,), (1,), pairs)
    >>> isinstance(op, TensorOperator), op.shape
    (True, (4, 3, 1))
    """

    __cptensor_operator__: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the (virtual) dense tensor."""
        ...

    @property
    def dtype(self) -> Any:
        """The dtype of the values."""
        ...

    def mttkrp(self, factors: Sequence[Array], mode: int) -> Array:
        """``unfold(X, mode) @ khatri_rao(factors, skip=mode)``, shape ``(I_mode, R)``."""
        ...

    def mttkrp_all(self, factors: Sequence[Array]) -> list[Array]:
        """The MTTKRP of every mode with the same factors (one pass where possible)."""
        ...

    def norm(self) -> float:
        """The Frobenius norm ``‖X‖`` (accumulated in float64)."""
        ...

    def to_dense(self) -> Array:
        """The dense tensor (for tests and small cases only)."""
        ...


# Optional members an operator may add (checked with ``hasattr``):
#   residual_norm(cp) -> float   exact ‖X − cp‖ (e.g. streamed block by block), used by
#                                fitting so that reported errors do not suffer from the
#                                cancellation in ‖X‖² + ‖M‖² − 2⟨X, M⟩.
#   inner_cp(cp) -> float        ⟨X, cp⟩ when cheaper than an MTTKRP.
#   multi_mode_product(matrices) X ×_1 M_1 ⋯ ×_N M_N (core consistency uses it with the
#                                factors' pseudo-inverses).
#   gram(mode) -> array          X_(mode) X_(mode)ᵀ; offer it only when cheap: fit_als uses it
#                                for its SVD start (without it, an operator starts at random).
#   unfolding_gram(mode)         the same, for multilinear_rank.
#   device                       the device of the values.


def is_operator(x: object) -> bool:
    """True when ``x`` declares itself a :class:`TensorOperator`.

    >>> import numpy as np
    >>> is_operator(np.ones((2, 2)))
    False
    """
    return bool(getattr(type(x), "__cptensor_operator__", False))
