"""Backend dispatch on the input arrays (never on global state).

The namespace comes from the arrays themselves through ``array_api_compat``; device and
dtype of the input are kept. Only a handful of operations that the array API lacks
(einsum-free batched contractions are written with ``matmul``) need backend knowledge,
and torch is only ever touched when a torch tensor arrives.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from .errors import CPTensorError, CPTensorTypeError

Array = Any  # any array-API array (NumPy ndarray, torch.Tensor, ...)


def is_array(x: object) -> bool:
    """True when ``x`` is an array of a supported backend (NumPy or an array-API library)."""
    return array_api_compat.is_array_api_obj(x) and not np.isscalar(x)


def is_torch(x: object) -> bool:
    """True for a ``torch.Tensor`` (without importing torch)."""
    return array_api_compat.is_torch_array(x)


def is_numpy(x: object) -> bool:
    """True for a NumPy ndarray."""
    return array_api_compat.is_numpy_array(x)


def namespace(*arrays: Array, names: Sequence[str] | None = None) -> Any:
    """The array-API namespace shared by ``arrays``.

    Raises ``TypeError`` naming the offending argument when the arrays come from different
    libraries (e.g. a NumPy factor with a torch tensor).
    """
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError:
        pass
    labels = list(names) if names is not None else [f"argument {i}" for i in range(len(arrays))]
    kinds = []
    for label, a in zip(labels, arrays):
        if not is_array(a):
            raise CPTensorTypeError(
                f"{label}: expected an array (NumPy ndarray or torch.Tensor), "
                f"got {type(a).__name__}"
            ) from None
        kinds.append(f"{label}: {type(a).__module__}.{type(a).__name__}")
    raise CPTensorTypeError(
        "arrays from different backends cannot be mixed ("
        + ", ".join(kinds)
        + "); convert them to one library first"
    ) from None


def is_floating(x: Array) -> bool:
    """True when ``x`` has a real floating dtype (NumPy kind ``"f"``, or a torch float)."""
    if is_torch(x):
        return bool(x.dtype.is_floating_point)
    return np.dtype(x.dtype).kind == "f"


def is_complex(x: Array) -> bool:
    """True when ``x`` has a complex floating dtype (complex64 or complex128)."""
    if is_torch(x):
        return bool(x.dtype.is_complex)
    return np.dtype(x.dtype).kind == "c"


def is_complex_dtype(dtype: Any) -> bool:
    """True for a complex NumPy or torch dtype (:func:`is_complex` for a dtype alone)."""
    if type(dtype).__module__.startswith("torch"):
        return bool(dtype.is_complex)
    return np.dtype(dtype).kind == "c"


def is_inexact(x: Array) -> bool:
    """True when ``x`` has a real or complex floating dtype."""
    return is_floating(x) or is_complex(x)


def conj(x: Array) -> Array:
    """The complex conjugate of ``x``; ``x`` itself (no copy) when it is real."""
    if not is_complex(x):
        return x
    return namespace(x).conj(x)


def abs2(x: Array) -> Array:
    """``|x|²`` elementwise, real-valued: ``x * x`` for real ``x``, ``re² + im²`` for complex."""
    if not is_complex(x):
        return x * x
    xp = namespace(x)
    re, im = xp.real(x), xp.imag(x)
    return re * re + im * im


def device(x: Array) -> Any:
    """The device of ``x`` (``"cpu"`` for NumPy)."""
    return array_api_compat.device(x)


def check_same_device_dtype(arrays: Sequence[Array], names: Sequence[str]) -> None:
    """Raise ``ValueError``/``TypeError`` naming the first array whose device or dtype differs."""
    if not arrays:
        return
    dev0, dt0 = device(arrays[0]), arrays[0].dtype
    for name, a in zip(names[1:], arrays[1:]):
        if device(a) != dev0:
            raise CPTensorError(
                f"{name} is on device {device(a)!r} but {names[0]} is on {dev0!r}; "
                "cptensor never moves data between devices: move them to one device first"
            )
        if a.dtype != dt0:
            raise CPTensorTypeError(
                f"{name} has dtype {a.dtype} but {names[0]} has dtype {dt0}; "
                "cptensor never casts silently: convert them to one dtype first"
            )


@functools.cache
def numpy_dtype(dtype: Any) -> np.dtype:
    """The NumPy dtype of a NumPy or torch dtype (``torch.float32`` -> ``float32``)."""
    if type(dtype).__module__.startswith("torch"):
        import torch

        return torch.empty(0, dtype=dtype).numpy().dtype
    return np.dtype(dtype)


def to_numpy(x: Array) -> np.ndarray:
    """A NumPy copy/view of ``x`` (moves torch tensors to the host)."""
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def contiguous(x: Array) -> Array:
    """``x`` with a row-major (C-contiguous) layout: ``x`` itself when it already has one.

    Only the layout changes (never the backend, device or dtype); used before products
    whose speed depends on unit-stride operands.
    """
    if is_numpy(x):
        return np.ascontiguousarray(x)
    if is_torch(x):
        return x.contiguous()
    return x


def asarray_like(values: Any, like: Array, dtype: Any = None) -> Array:
    """``values`` as an array of ``like``'s backend, device and (unless given) dtype."""
    xp = namespace(like)
    return xp.asarray(values, dtype=like.dtype if dtype is None else dtype, device=device(like))


def shape_tuple(x: Array) -> tuple[int, ...]:
    """The shape of ``x`` as a tuple of Python ints (torch returns ``torch.Size``)."""
    return tuple(int(s) for s in x.shape)


def float64_of(xp: Any, x: Array) -> Array:
    """``x`` in float64 (complex128 for complex ``x``) on its own device (used to
    accumulate sums that cancel)."""
    if is_torch(x):
        import torch

        if x.dtype.is_complex:
            return x.to(torch.complex64 if x.device.type == "mps" else torch.complex128)
        if x.device.type == "mps":  # MPS has no float64
            return x.to(torch.float32)
        return x.to(torch.float64)
    if is_complex(x):
        return xp.astype(x, xp.complex128)
    return xp.astype(x, xp.float64)


def scalar(x: Array) -> float:
    """A Python float from a 0-d (or size-1) array of any backend."""
    if is_torch(x):
        return float(x.detach().reshape(()).item())
    return float(np.asarray(x).reshape(()))


def validate_mode(mode: Any, ndim: int, name: str = "mode") -> int:
    """Check a mode index against ``ndim``; negative modes count from the end."""
    if isinstance(mode, bool) or not isinstance(mode, (int, np.integer)):
        raise CPTensorTypeError(f"{name} must be an int, got {type(mode).__name__} ({mode!r})")
    mode = int(mode)
    if not -ndim <= mode < ndim:
        raise CPTensorError(
            f"{name}={mode} is out of range for a {ndim}-way tensor "
            f"(expected {-ndim} <= {name} < {ndim})"
        )
    return mode % ndim
