"""Validation and small numerical helpers shared by the fitting routines."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from .._backend import (
    Array,
    abs2,
    check_same_device_dtype,
    device,
    float64_of,
    is_array,
    is_complex,
    is_floating,
    is_numpy,
    is_torch,
    namespace,
    shape_tuple,
    validate_mode,
)
from ..cp import _CP_FORMS, CPTensor, _to_cp
from ..errors import CPTensorError, CPTensorTypeError
from ..operator import is_operator

#: Elements per chunk for streamed reductions (residuals, norms).
CHUNK_ELEMENTS = 1 << 22


def eps_of(dtype: Any) -> float:
    """Machine epsilon of a NumPy or torch floating dtype."""
    if type(dtype).__module__.startswith("torch"):
        import torch

        return float(torch.finfo(dtype).eps)
    return float(np.finfo(np.dtype(dtype)).eps)


def check_rank(rank: Any, name: str = "rank") -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise CPTensorTypeError(
            f"{name} must be a positive int or a CP model to start from ({_CP_FORMS}), "
            f"got {type(rank).__name__} ({rank!r})"
        )
    if int(rank) < 1:
        raise CPTensorError(f"{name} must be >= 1, got {int(rank)}")
    return int(rank)


def check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CPTensorTypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if int(value) < minimum:
        raise CPTensorError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def check_nonneg_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CPTensorTypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise CPTensorError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_callback(callback: Any) -> Callable[[Any], Any] | None:
    if callback is not None and not callable(callback):
        raise CPTensorTypeError(f"callback must be callable or None, got {type(callback).__name__}")
    return callback


def check_fixed_modes(fixed_modes: Any, ndim: int) -> tuple[int, ...]:
    if isinstance(fixed_modes, (int, np.integer)) and not isinstance(fixed_modes, bool):
        fixed_modes = (fixed_modes,)
    if not isinstance(fixed_modes, Sequence) or isinstance(fixed_modes, str):
        raise CPTensorTypeError(
            f"fixed_modes must be a sequence of mode indices, got {type(fixed_modes).__name__}"
        )
    out = sorted({validate_mode(m, ndim, "fixed_modes") for m in fixed_modes})
    if len(out) == ndim:
        raise CPTensorError(
            f"fixed_modes={tuple(fixed_modes)!r} names every mode of the {ndim}-way tensor; "
            "at least one mode must be free to fit"
        )
    return tuple(out)


def check_nonnegative(nonnegative: Any, ndim: int) -> tuple[int, ...]:
    """The modes to keep non-negative: all for ``True``, none for ``False``, or the
    collection of mode indices given (TensorLy's ``nn_modes``), validated and sorted."""
    if isinstance(nonnegative, (bool, np.bool_)):
        return tuple(range(ndim)) if nonnegative else ()
    if isinstance(nonnegative, (int, np.integer)):
        raise CPTensorTypeError(
            f"nonnegative must be a bool or a collection of mode indices, got the int "
            f"{nonnegative!r}; write nonnegative=({nonnegative},) for one mode"
        )
    if isinstance(nonnegative, (str, bytes)) or not isinstance(nonnegative, Collection):
        raise CPTensorTypeError(
            "nonnegative must be a bool or a collection of mode indices (e.g. (0, 2)), "
            f"got {type(nonnegative).__name__} ({nonnegative!r})"
        )
    modes = [validate_mode(m, ndim, "nonnegative mode") for m in nonnegative]
    if len(set(modes)) != len(modes):
        raise CPTensorError(
            f"nonnegative={tuple(nonnegative)!r} names a mode twice (after resolving "
            f"negative indices: {modes}); give each mode once"
        )
    return tuple(sorted(modes))


def check_tensor(x: Any, complex_ok: bool = False) -> tuple[tuple[int, ...], Any]:
    """Shape and dtype of a dense array or operator, with clear errors.

    ``complex_ok``: also accept complex64/complex128 dense arrays (the fits that support
    complex data say so; the others refuse it naming ``fit_als`` as the one that does).
    """
    if is_operator(x):
        dt = x.dtype
        if "complex" in str(dt):
            raise CPTensorTypeError(
                f"x is a complex TensorOperator ({type(x).__name__}, dtype {dt}); complex "
                "data is supported for dense arrays only (densify it with x.to_dense())"
            )
        shape = tuple(int(s) for s in x.shape)
        if len(shape) < 2:
            raise CPTensorError(f"x must have at least 2 modes, got shape {shape}")
        return shape, x.dtype
    if not is_array(x):
        raise CPTensorTypeError(
            f"x must be an array (NumPy or torch) or a TensorOperator, got {type(x).__name__}"
        )
    xp = namespace(x, names=["x"])
    if is_complex(x):
        if not complex_ok:
            raise CPTensorTypeError(
                f"x has the complex dtype {x.dtype}: this fit supports real data only; "
                "fit complex data with cptensor.fit.fit_als (without nonnegative=)"
            )
        if x.dtype not in (xp.complex64, xp.complex128):
            raise CPTensorTypeError(f"x must have a dtype complex64 or complex128, got {x.dtype}")
    elif not is_floating(x) or x.dtype not in (xp.float32, xp.float64):
        raise CPTensorTypeError(
            f"x must have a floating dtype float32 or float64, got {x.dtype} (fits need "
            "float32 precision at least: convert half-precision data with .float())"
        )
    if x.ndim < 2:
        raise CPTensorError(f"x must have at least 2 modes, got shape {shape_tuple(x)}")
    if any(s == 0 for s in shape_tuple(x)):
        raise CPTensorError(f"x must not be empty, got shape {shape_tuple(x)}")
    return shape_tuple(x), x.dtype


def check_start(start: CPTensor, shape: tuple[int, ...], x: Any, name: str) -> None:
    if start.shape != shape:
        raise CPTensorError(f"{name} has shape {start.shape} but x has shape {shape}")
    xp = start.xp
    if not all(bool(xp.all(xp.isfinite(a))) for a in (start.weights, *start.factors)):
        raise CPTensorError(f"{name}: the start holds NaN or infinite values")
    if is_operator(x):
        if start.dtype != x.dtype:
            raise CPTensorTypeError(f"{name} has dtype {start.dtype} but x has dtype {x.dtype}")
        return
    namespace(x, start.factors[0], names=["x", name])
    check_same_device_dtype([x, start.factors[0]], ["x", f"{name}.factors[0]"])


def coerce_start(rank: Any, init: Any) -> tuple[Any, Any]:
    """``rank`` and ``init`` with a CP model in any accepted form (a CPFit, a TensorLy
    CPTensor, a ``(weights, factors)`` pair) made a CPTensor; other values as given, for
    the checks of :func:`resolve_start`."""
    if not isinstance(rank, (int, np.integer, CPTensor)):
        cp = _to_cp(rank, "rank")
        rank = rank if cp is None else cp
    if not isinstance(init, (str, CPTensor)):
        cp = _to_cp(init, "init")
        init = init if cp is None else cp
    return rank, init


#: Ranks above the number of entries are refused only beyond this (small overcomplete
#: fits are legitimate tests of rank-deficient normal equations).
_MAX_OVERCOMPLETE_RANK = 1024


def resolve_start(
    x: Any, shape: tuple[int, ...], rank: Any, init: Any, inits: Sequence[str]
) -> tuple[CPTensor | None, int]:
    """The given start (``rank`` or ``init`` as a CPTensor, checked against ``x``) or None
    when ``init`` names one of ``inits``, and the rank to fit."""
    if isinstance(rank, CPTensor):
        check_start(rank, shape, x, "rank")
        return rank, rank.rank
    rank = check_rank(rank)
    entries = math.prod(shape)
    if rank > max(entries, _MAX_OVERCOMPLETE_RANK):
        raise CPTensorError(
            f"rank={rank} exceeds the {entries} entries of a tensor of shape {shape} (its CP "
            f"rank is at most {entries // max(shape)}); refused before allocating factors"
        )
    if isinstance(init, CPTensor):
        check_start(init, shape, x, "init")
        if init.rank != rank:
            raise CPTensorError(f"init has rank {init.rank} but rank={rank}")
        return init, rank
    if not isinstance(init, str) or init not in inits:
        bad_type = not isinstance(init, str)
        got = type(init).__name__ if bad_type else repr(init)
        raise (CPTensorTypeError if bad_type else CPTensorError)(
            f"init must be one of {tuple(inits)} or a CP model ({_CP_FORMS}), got {got}"
        )
    return None, rank


def all_finite(xp: Any, a: Array) -> bool:
    """True when every entry of ``a`` is finite, in one read of ``a`` when it is: a NaN or
    infinite entry makes the sum non-finite (much cheaper than ``isfinite`` in torch); a
    sum that overflowed is checked entry by entry (NumPy's overflow warning silenced)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = xp.sum(a)
    return bool(xp.isfinite(total)) or bool(xp.all(xp.isfinite(a)))


def prepare_mask(x: Array, mask: Any) -> Array | None:
    """Validate ``mask`` (True = observed) or derive it from NaNs; None when all observed."""
    xp = namespace(x)
    if mask is None:
        # The common case in one read of x and no temporary: a NaN or infinite entry
        # makes the sum non-finite (a finite sum that overflows is checked entry-wise).
        if all_finite(xp, x):
            return None
        nan = xp.isnan(x)
        if bool(xp.any(nan)):
            count = int(xp.sum(xp.astype(nan, xp.int64)))
            warnings.warn(
                f"x has {count} NaN value(s) and mask is None: treating NaNs as missing "
                "entries (pass mask= to make this explicit)",
                UserWarning,
                stacklevel=3,
            )
            mask = ~nan
        else:
            raise CPTensorError("x has infinite values; replace them or mask them out (mask=)")
    else:
        if not is_array(mask):
            raise CPTensorTypeError(
                f"mask must be a boolean array like x (True = observed), got {type(mask).__name__}"
            )
        namespace(x, mask, names=["x", "mask"])
        if shape_tuple(mask) != shape_tuple(x):
            raise CPTensorError(
                f"mask has shape {shape_tuple(mask)}, expected the shape of x {shape_tuple(x)}"
            )
        if mask.dtype != xp.bool:
            raise CPTensorTypeError(
                f"mask must have a boolean dtype (True = observed), got {mask.dtype}"
            )
        if device(mask) != device(x):
            raise CPTensorError(
                f"mask is on device {device(mask)!r} but x is on {device(x)!r}; "
                "move them to one device first"
            )
    n_obs = int(xp.sum(xp.astype(mask, xp.int64)))
    if n_obs == 0:
        raise CPTensorError("mask marks no entry as observed (all data masked): nothing to fit")
    if bool(xp.any(mask & ~xp.isfinite(x))):
        raise CPTensorError(
            "x has non-finite values (NaN or inf) at observed entries (where mask is True)"
        )
    if n_obs == math.prod(shape_tuple(x)):
        return None
    return mask


#: Elements per chunk of the streamed float64 reductions on the CPU: a float64 chunk of
#: 2 MiB stays in cache between its conversion and its dot product (about twice as fast
#: as chunks of ``CHUNK_ELEMENTS``, whose temporaries go through main memory).
REDUCE_ELEMENTS = 1 << 18


def reduce_elements(a: Array) -> int:
    """Chunk size (elements) for a streamed float64 reduction over ``a``: cache-sized on
    the CPU, :data:`CHUNK_ELEMENTS` on an accelerator (where each chunk costs launches)."""
    if is_numpy(a) or (is_torch(a) and a.device.type == "cpu"):
        return REDUCE_ELEMENTS
    return CHUNK_ELEMENTS


_SCRATCH = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A NumPy work array of ``shape`` and ``dtype`` kept for the calling thread and handed
    out again to the next call with the same ``name`` (contents undefined).

    A large temporary allocated afresh on every call is mapped afresh too, and its first
    writes then cost a page fault per 4 KiB: about 2 µs each, more than converting and
    summing the numbers in it. The caller must be done with the array before its next
    use under the same name (no nesting, no keeping it).
    """
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.size < nbytes:
        buf = bufs[name] = np.empty(nbytes, np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def sum_squares_chunk(xp: Any, c: Array) -> Any:
    """``Σ |c|²`` of one chunk in float64 (squares and sum), as a Python float for arrays in
    CPU memory and a 0-d tensor on an accelerator (so that a loop over chunks synchronises
    a GPU only once).

    A torch CPU chunk is summed through a NumPy view of it: NumPy's float64 conversion
    and dot are about 1.5x as fast as torch's on the CPU."""
    if is_torch(c) and c.device.type == "cpu":
        c = c.numpy(force=True)  # a view (lazy conjugation resolved)
    if is_numpy(c):
        v = c.reshape(-1)
        if v.dtype not in (np.float64, np.complex128):
            wide = np.complex128 if v.dtype.kind == "c" else np.float64
            v64 = scratch("sum_squares64", v.shape, wide)
            np.copyto(v64, v)
            v = v64
        return float(np.vdot(v, v).real)
    if is_complex(c):
        return xp.sum(abs2(float64_of(xp, c)))
    v = xp.reshape(float64_of(xp, c) if c.dtype != xp.float64 else c, (-1,))
    if is_torch(v):
        import torch

        return torch.dot(v, v)
    return xp.sum(v * v)


def sum_squares64(xp: Any, a: Array) -> float:
    """``Σ |a|²`` accumulated in float64, streamed in chunks over the first axis."""
    flat = xp.reshape(a, (int(a.shape[0]), -1)) if a.ndim > 1 else xp.reshape(a, (-1, 1))
    rows = int(flat.shape[0])
    step = max(1, reduce_elements(a) // max(1, int(flat.shape[1])))
    total: Any = 0.0
    for start in range(0, rows, step):
        total = total + sum_squares_chunk(xp, flat[start : start + step])
    return float(total)


def progress_bar(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is installed in the dev environment
        raise ImportError(
            "progress=True needs the optional 'tqdm' package; install it "
            "(pip install tqdm, or the cptensor[progress] extra)"
        ) from None
    return tqdm(total=total, desc=desc)


#: Data whose largest magnitude lies outside ``[2**-_SCALE_EXP, 2**_SCALE_EXP]`` is fitted
#: after an exact power-of-two rescaling: squares of entries below ~1e-162 underflow to 0
#: in float64 (and below ~1e-19 lose precision in float32), and above ~1e154 overflow.
_SCALE_EXP = 30


#: The largest power of two :func:`magnitude_scale` returns (2^1000 < the largest double).
_MAX_SCALE_EXP = 1000


def magnitude_scale(xp: Any, a: Array) -> float:
    """A power of two ``s`` with ``max|s·a|`` in ``[0.5, 1)``, or ``1.0`` when ``max|a|``
    already lies in ``[2^-30, 2^30]``, is zero or is not finite (multiplying by ``s`` is
    then exact, barring subnormals); for a subnormal maximum ``s`` stops at ``2^1000``."""
    if not math.prod(shape_tuple(a)):
        return 1.0
    if is_complex(a):
        amax = float(xp.max(xp.abs(a)))
    else:  # max and min: two reads of ``a``, no array of |a| written
        hi, lo = float(xp.max(a)), float(xp.min(a))
        amax = max(hi, -lo) if math.isfinite(hi) and math.isfinite(lo) else math.nan
    if amax == 0.0 or not math.isfinite(amax):
        return 1.0
    exp = math.frexp(amax)[1]  # amax = m·2^exp with m in [0.5, 1)
    if -_SCALE_EXP <= exp <= _SCALE_EXP:
        return 1.0
    # A subnormal maximum (exp < -1021) would need s above the largest double: stop at
    # 2^1000, which still brings it far into the normal range.
    return math.ldexp(1.0, min(-exp, _MAX_SCALE_EXP))


def norm_within_scale(norm_sq: float, size: int) -> bool:
    """True when ``norm_sq = Σ |a|²`` over ``size`` entries proves that
    :func:`magnitude_scale` returns 1 for ``a`` (saving its reads of ``a``):
    ``‖a‖/√size <= max|a| <= ‖a‖``, with a factor of 2 to spare on each side for rounding."""
    return size * 2.0 ** (-2 * _SCALE_EXP) <= norm_sq <= 2.0 ** (2 * _SCALE_EXP - 2)


def scale_cp(cp: CPTensor, c: float) -> CPTensor:
    """``cp`` with its weights multiplied by ``c``."""
    return CPTensor(cp.weights * c, cp.factors)


def rescaled(
    fit: Callable[..., Any],
    x: Array,
    s: float,
    rank: Any,
    init: Any,
    callback: Callable[[Any], Any] | None,
    **kwargs: Any,
) -> Any:
    """``fit(s·x, ...)`` with its start, callback states and result brought back to the
    scale of ``x`` (the fit and relative error do not depend on the scale)."""
    from dataclasses import replace

    if isinstance(rank, CPTensor):
        rank = scale_cp(rank, s)
    if isinstance(init, CPTensor):
        init = scale_cp(init, s)
    inner = None
    if callback is not None:

        def inner(state: Any) -> Any:
            return callback(replace(state, cp=scale_cp(state.cp, 1.0 / s)))

    result = fit(x * s, rank, init=init, callback=inner, **kwargs)
    return replace(result, cp=scale_cp(result.cp, 1.0 / s), info={**result.info, "rescaled_by": s})
