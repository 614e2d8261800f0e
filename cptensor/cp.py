"""The CP tensor type: ``[[λ; A_1, …, A_N]]`` with weights λ and factor matrices A_n."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ._backend import (
    Array,
    check_same_device_dtype,
    device,
    is_array,
    is_floating,
    namespace,
    shape_tuple,
)
from .errors import CPTensorError, CPTensorTypeError


class CPTensor:
    """An immutable rank-R CP (Candecomp/Parafac) tensor ``Σ_r λ_r a_1r ∘ … ∘ a_Nr``.

    Parameters
    ----------
    weights:
        1-D array of length R, or ``None`` for ones.
    factors:
        Sequence of N 2-D arrays, factor ``n`` of shape ``(I_n, R)``. All factors (and the
        weights) must come from one backend, live on one device and share one dtype.

    Notes
    -----
    The object unpacks as ``weights, factors = cp`` (as TensorLy's ``CPTensor`` does) and
    never changes after construction; operations return new objects.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> cp = CPTensor(None, [np.ones((4, 2)), np.ones((3, 2)), np.ones((2, 2))])
    >>> cp.shape, cp.rank, cp.ndim
    ((4, 3, 2), 2, 3)
    >>> weights, factors = cp
    >>> weights
    array([1., 1.])
    """

    __slots__ = ("_factors", "_weights")

    def __init__(self, weights: Array | None, factors: Sequence[Array]) -> None:
        if is_array(factors) or not isinstance(factors, Sequence) or isinstance(factors, str):
            raise CPTensorTypeError(
                "factors must be a sequence (list or tuple) of 2-D arrays, "
                f"got {type(factors).__name__}"
            )
        factors = tuple(factors)
        if len(factors) == 0:
            raise CPTensorError(
                "factors must hold at least one factor matrix, got an empty sequence"
            )
        names = [f"factors[{n}]" for n in range(len(factors))]
        for name, f in zip(names, factors):
            if not is_array(f):
                raise CPTensorTypeError(f"{name} must be an array, got {type(f).__name__}")
        namespace(*factors, names=names)
        for name, f in zip(names, factors):
            if f.ndim != 2:
                raise CPTensorError(
                    f"{name} must be 2-D of shape (I_n, rank), got shape {shape_tuple(f)}"
                )
        for name, f in zip(names, factors):
            if not is_floating(f):
                raise CPTensorTypeError(
                    f"{name} has dtype {f.dtype}; a CPTensor holds real floating values "
                    "(float16, bfloat16, float32, float64): convert the factors first, e.g. "
                    "with .astype(float) or .double()"
                )
        rank = int(factors[0].shape[1])
        for name, f in zip(names, factors):
            if int(f.shape[1]) != rank:
                raise CPTensorError(
                    f"{name} has {int(f.shape[1])} columns but factors[0] has {rank}: "
                    "all factors must have rank columns"
                )
        check_same_device_dtype(factors, names)
        xp = namespace(factors[0])
        if weights is None:
            weights = xp.ones((rank,), dtype=factors[0].dtype, device=device(factors[0]))
        else:
            if not is_array(weights):
                raise CPTensorTypeError(
                    f"weights must be an array or None, got {type(weights).__name__}"
                )
            namespace(factors[0], weights, names=["factors[0]", "weights"])
            if weights.ndim != 1 or int(weights.shape[0]) != rank:
                raise CPTensorError(
                    f"weights must be 1-D of length rank={rank}, got shape {shape_tuple(weights)}"
                )
            check_same_device_dtype([factors[0], weights], ["factors[0]", "weights"])
        self._weights = weights
        self._factors = factors

    # -- read-only views --------------------------------------------------------------
    @property
    def weights(self) -> Array:
        """The weights λ, a 1-D array of length ``rank``."""
        return self._weights

    @property
    def factors(self) -> tuple[Array, ...]:
        """The factor matrices, a tuple of arrays of shape ``(I_n, rank)``."""
        return self._factors

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape ``(I_1, …, I_N)`` of the tensor this CP represents."""
        return tuple(int(f.shape[0]) for f in self._factors)

    @property
    def rank(self) -> int:
        """The number of components R."""
        return int(self._factors[0].shape[1])

    @property
    def ndim(self) -> int:
        """The number of modes N."""
        return len(self._factors)

    @property
    def dtype(self) -> Any:
        """The dtype shared by weights and factors."""
        return self._factors[0].dtype

    @property
    def device(self) -> Any:
        """The device shared by weights and factors (``"cpu"`` for NumPy)."""
        return device(self._factors[0])

    @property
    def xp(self) -> Any:
        """The array-API namespace of the factors."""
        return namespace(self._factors[0])

    # -- TensorLy-style unpacking ----------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        yield self._weights
        yield self._factors

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Any:
        if index in (0, -2):
            return self._weights
        if index in (1, -1):
            return self._factors
        raise IndexError(f"CPTensor unpacks as (weights, factors); index {index} is out of range")

    def __repr__(self) -> str:
        backend = type(self._factors[0]).__module__.split(".")[0]
        return (
            f"CPTensor(shape={self.shape}, rank={self.rank}, dtype={self.dtype}, "
            f"backend={backend}, device={self.device})"
        )

    def __eq__(self, other: object) -> bool:  # identity semantics; compare values explicitly
        return self is other

    __hash__ = object.__hash__

    # -- construction helpers -----------------------------------------------------------
    def with_(
        self, *, weights: Array | None = None, factors: Sequence[Array] | None = None
    ) -> CPTensor:
        """A new CPTensor with ``weights`` and/or ``factors`` replaced.

        >>> import numpy as np
        >>> cp = CPTensor(None, [np.ones((2, 1)), np.ones((3, 1))])
        >>> cp.with_(weights=np.array([2.0])).weights
        array([2.])
        """
        return CPTensor(
            self._weights if weights is None else weights,
            self._factors if factors is None else factors,
        )

    @classmethod
    def from_tensorly(cls, cp: Any) -> CPTensor:
        """Build from a TensorLy ``CPTensor`` or a ``(weights, factors)`` pair.

        >>> import numpy as np
        >>> CPTensor.from_tensorly((np.ones(2), [np.ones((3, 2)), np.ones((4, 2))])).shape
        (3, 4)
        """
        try:
            weights, factors = cp
        except (TypeError, ValueError):
            raise CPTensorTypeError(
                "cp must be a TensorLy CPTensor or a (weights, factors) pair, "
                f"got {type(cp).__name__}"
            ) from None
        return cls(weights, list(factors))

    def to_tensorly(self) -> Any:
        """The same tensor as a ``tensorly.cp_tensor.CPTensor`` (requires ``tensorly``).

        Note that TensorLy interprets the arrays through its global backend: set it to
        match this tensor's backend before calling TensorLy functions on the result.
        """
        from tensorly.cp_tensor import CPTensor as TLCPTensor

        return TLCPTensor((self._weights, list(self._factors)))
