"""The CP tensor type: ``[[λ; A_1, …, A_N]]`` with weights λ and factor matrices A_n."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ._backend import (
    Array,
    check_same_device_dtype,
    device,
    is_array,
    is_inexact,
    namespace,
    shape_tuple,
)
from .errors import CPTensorError, CPTensorTypeError

__all__ = ["CPTensor", "as_cp"]


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
            if not is_inexact(f):
                raise CPTensorTypeError(
                    f"{name} has dtype {f.dtype}; a CPTensor holds real floating values "
                    "(float16, bfloat16, float32, float64) or complex ones (complex64, "
                    "complex128): convert the factors first, e.g. with .astype(float) or "
                    ".double()"
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

        TensorLy itself does not require weights and factors to share a dtype: its
        PyTorch backend happily holds float32 weights with float64 factors, and its
        products promote them. This constructor does the same: when the weights and
        factors have different *floating* dtypes (same backend, same device), all are
        converted to their common result dtype (``result_type`` of the backend: float32
        with float64 gives float64), and only then checked. Integer arrays, mixed
        backends and mixed devices are still refused with an error naming the array.

        Parameters
        ----------
        cp:
            A ``tensorly.cp_tensor.CPTensor`` (any object with ``weights`` and
            ``factors`` attributes, such as pyttb's ``ktensor``, is read the same way) or
            a ``(weights, factors)`` tuple or list, ``weights`` possibly ``None``.

        Returns
        -------
        CPTensor
            The same model, in the common dtype of its arrays.

        Examples
        --------
        >>> import numpy as np
        >>> CPTensor.from_tensorly((np.ones(2), [np.ones((3, 2)), np.ones((4, 2))])).shape
        (3, 4)
        >>> w32 = np.ones(2, dtype=np.float32)
        >>> CPTensor.from_tensorly((w32, [np.ones((3, 2)), np.ones((4, 2))])).dtype
        dtype('float64')
        """
        parts = _weights_and_factors(cp)
        if parts is None:
            raise CPTensorTypeError(
                "cp must be a TensorLy CPTensor or a (weights, factors) pair, "
                f"got {type(cp).__name__}"
            )
        weights, factors = _promoted(*parts)
        return cls(weights, factors)

    def to_tensorly(self) -> Any:
        """The same tensor as a ``tensorly.cp_tensor.CPTensor`` (requires ``tensorly``).

        Note that TensorLy interprets the arrays through its global backend: set it to
        match this tensor's backend before calling TensorLy functions on the result.
        """
        from tensorly.cp_tensor import CPTensor as TLCPTensor

        return TLCPTensor((self._weights, list(self._factors)))

    def plot(self, **kwargs: Any) -> Any:
        """A figure of the components, one subplot per mode: :func:`cptensor.plot.components`.

        Keyword arguments are passed on to :func:`cptensor.plot.components`; needs
        ``matplotlib``.

        >>> import numpy as np
        >>> cp = CPTensor(np.array([2.0, 1.0]), [np.eye(3)[:, :2], np.ones((4, 2))])
        >>> len(cp.plot().axes)
        2
        """
        from .plot import components

        return components(self, **kwargs)


#: What :func:`as_cp` accepts, for error messages.
_CP_FORMS = (
    "a cptensor.CPTensor, a CPFit (its .cp is used), a TensorLy CPTensor or a "
    "(weights, factors) pair (weights may be None)"
)


def _is_pair(obj: Any) -> bool:
    """``(weights, factors)``: a 2-tuple/list whose second item is a sequence of arrays
    (not an array itself; a list of two factor matrices is not a pair)."""
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        return False
    weights, factors = obj
    return (
        (weights is None or is_array(weights))
        and isinstance(factors, (tuple, list))
        and not is_array(factors)
    )


def _weights_and_factors(obj: Any) -> tuple[Any, list[Any]] | None:
    """The ``(weights, factors)`` of a foreign CP model, or None when ``obj`` is not one."""
    if is_array(obj) or isinstance(obj, (str, bytes)):
        return None
    if _is_pair(obj):
        return obj[0], list(obj[1])
    # TensorLy's CPTensor (also a Mapping there) and pyttb's ktensor carry both attributes
    weights = getattr(obj, "weights", None)
    factors = getattr(obj, "factors", None)
    if (weights is None or is_array(weights)) and isinstance(factors, (tuple, list)):
        return weights, list(factors)
    return None


def _promoted(weights: Any, factors: list[Any]) -> tuple[Any, list[Any]]:
    """Weights and factors in their common floating dtype (as TensorLy's backends promote);
    unchanged unless all are floating arrays of one backend and one device."""
    arrays = [a for a in (weights, *factors) if a is not None]
    if not arrays or not all(is_array(a) for a in arrays):
        return weights, factors
    try:
        xp = namespace(*arrays)
    except CPTensorTypeError:  # mixed backends: the constructor names the culprit
        return weights, factors
    if not all(is_inexact(a) for a in arrays) or len({str(device(a)) for a in arrays}) > 1:
        return weights, factors
    if len({a.dtype for a in arrays}) == 1:
        return weights, factors
    dt = xp.result_type(*arrays)

    def cast(a: Any) -> Any:
        return a if a is None or a.dtype == dt else xp.astype(a, dt)

    return cast(weights), [cast(f) for f in factors]


def _to_cp(obj: Any, name: str) -> CPTensor | None:
    """``obj`` as a CPTensor when it is any accepted form of a CP model, else None.

    A malformed model of an accepted form (an integer factor, ranks that disagree) raises
    the constructor's error, prefixed with ``name``.
    """
    if isinstance(obj, CPTensor):
        return obj
    held = getattr(obj, "cp", None)  # a CPFit, or any result object holding its model
    if isinstance(held, CPTensor):
        return held
    parts = _weights_and_factors(obj)
    if parts is None:
        return None
    try:
        return CPTensor(*_promoted(*parts))
    except CPTensorError as err:
        raise type(err)(f"{name}: {err}", argument=name) from None


def as_cp(obj: Any, name: str = "cp") -> CPTensor:
    """The CP model that ``obj`` holds, as a :class:`CPTensor`.

    Every ``cptensor`` function that takes a CP model passes it through here, so all
    of them accept the same forms: a :class:`CPTensor` (returned as is), a
    :class:`~cptensor.fit.CPFit` (its ``.cp``), a TensorLy ``CPTensor`` (read through
    its ``weights`` and ``factors``, without importing TensorLy) and a
    ``(weights, factors)`` tuple or list with ``weights`` possibly ``None``. Foreign
    models whose weights and factors differ in floating dtype are promoted to the common
    dtype, as in :meth:`CPTensor.from_tensorly`. Nothing else is converted.

    Parameters
    ----------
    obj:
        The CP model, in any of the forms above.
    name:
        The argument name used in error messages.

    Returns
    -------
    CPTensor
        ``obj`` itself when it is a CPTensor, else a new one sharing its arrays (unless
        promoted).

    Raises
    ------
    CPTensorTypeError
        When ``obj`` is none of these forms; the message names ``name`` and lists what is
        accepted. A malformed model of an accepted form raises the constructor's error,
        prefixed with ``name``.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor, as_cp
    >>> as_cp((None, [np.ones((3, 2)), np.ones((4, 2))])).shape
    (3, 4)
    >>> cp = CPTensor(None, [np.ones((3, 2))])
    >>> as_cp(cp) is cp
    True
    >>> as_cp(np.ones((3, 2)), "a")
    Traceback (most recent call last):
    ...
    cptensor.errors.CPTensorTypeError: a must be a cptensor.CPTensor, a CPFit ... got ndarray
    """
    cp = _to_cp(obj, name)
    if cp is None:
        raise CPTensorTypeError(f"{name} must be {_CP_FORMS}, got {type(obj).__name__}")
    return cp
