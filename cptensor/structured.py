"""Structured tensors that are never held densely: streamed blocks and low-rank blocks.

Both classes implement the :class:`~cptensor.operator.TensorOperator` protocol, so
``fit_als``, ``norm``, ``inner``, ``mttkrp``, ``mttkrp_all``, ``core_consistency`` and
``rank_sweep`` accept them in place of a dense array.

Layout. The modes of the tensor are split into *grid* modes, which index blocks, and
*block* modes, which are the axes of one block. For the LoRTA tensor of a transformer,
shape ``(d, d_h, H, L, M)``, the grid modes are ``(3, 4)`` (layer, matrix) and each
``(l, m)`` block is the ``d × d`` weight (update) of that layer and matrix, whose input
dimension ``d`` is split row-major into ``(d_h, H)``: block modes ``(0, 1, 2)`` and stored
block shape ``(d, d)``. Grid modes are the modes not listed as block modes, in increasing
order; a block key is the tuple of grid indices in that order (an ``int`` is accepted for
a single grid mode).

* :class:`BlockTensor` reads blocks lazily, one at a time, from a callable or a mapping
  (e.g. a memory-mapped safetensors file, see :meth:`BlockTensor.from_safetensors`).
  MTTKRP, norms, residual norms and mode products stream over the blocks: peak memory
  is about one block plus the factors, plus per-block partial contractions that are kept
  between MTTKRP calls (bounded by ``cache_bytes``) so that an ALS sweep reads the
  blocks twice rather than once per mode.
* :class:`LowRankBlockTensor` holds each block as ``U Vᵀ`` (a LoRA update ``B A`` is
  ``U = B``, ``V = Aᵀ``). Its rows are reshaped row-major into the *row modes* and its
  columns into the *column modes*. Every contraction is a handful of GEMMs with the
  stacked ``U`` and ``V``; no block is ever formed (except in :meth:`to_dense`).

Optional members (beyond the protocol) that both classes provide:

``residual_norm(cp)``
    ``‖X − cp‖``, accumulated in float64 (block by block for :class:`BlockTensor`).
``inner_cp(cp)``
    ``⟨X, cp⟩``.
``multi_mode_product(matrices)``
    ``X ×_0 M_0 ×_1 M_1 … ×_{N-1} M_{N-1}`` with every mode multiplied, ``M_n`` of shape
    ``(J_n, I_n)``: a small dense tensor of shape ``(J_0, …, J_{N-1})``. Core consistency
    uses it with ``M_n = A_n⁺``.
``unfolding_gram(mode)``
    ``X_(n) X_(n)ᵀ``, the ``(I_n, I_n)`` Gram matrix of the mode-``n`` unfolding (used by
    :func:`cptensor.analysis.multilinear_rank`).
``gram(mode)``
    The same, offered only where it is cheap (:class:`LowRankBlockTensor`): fitting uses
    it for SVD initialisation. A :class:`BlockTensor` does not offer it, since its Gram
    costs ``I_n`` times a streamed MTTKRP for a block mode and reads pairs of blocks for a
    grid mode; ``fit_als`` then starts from random factors.
``device``
    The device of the values.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._backend import (
    Array,
    check_same_device_dtype,
    device,
    float64_of,
    is_array,
    namespace,
    scalar,
    shape_tuple,
)
from .cp import CPTensor
from .errors import CPTensorError, CPTensorKeyError, CPTensorTypeError
from .files import SafetensorsFile
from .products import _best_split, _contract_rank_first, _khatri_rao, _mttkrp_one, kronecker
from .reconstruct import fix_modes, reconstruct

__all__ = ["BlockTensor", "LowRankBlockTensor"]

Key = tuple[int, ...]


class _Stacks(NamedTuple):
    """The ``U`` and ``V`` of a :class:`LowRankBlockTensor`'s blocks, stacked."""

    u: Array  # (p, G, S)
    v: Array  # (q, G, S)
    s: int
    xp: Any


# -- shared helpers -------------------------------------------------------------------
def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        out = tuple(shape)
    except TypeError:
        raise CPTensorTypeError(
            f"shape must be a sequence of ints, got {type(shape).__name__}"
        ) from None
    for s in out:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or int(s) < 1:
            raise CPTensorError(f"shape must hold positive ints, got {out}")
    if len(out) < 2:
        raise CPTensorError(f"shape must have at least 2 modes, got {out}")
    return tuple(int(s) for s in out)


def _check_modes(modes: Any, ndim: int, name: str) -> tuple[int, ...]:
    try:
        out = tuple(modes)
    except TypeError:
        raise CPTensorTypeError(
            f"{name} must be a sequence of ints, got {type(modes).__name__}"
        ) from None
    if not out:
        raise CPTensorError(f"{name} must name at least one mode, got {out}")
    res = []
    for m in out:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
            raise CPTensorTypeError(f"{name} must hold ints, got {out}")
        if not -ndim <= int(m) < ndim:
            raise CPTensorError(f"{name}={out}: mode {m} is out of range for a {ndim}-way tensor")
        res.append(int(m) % ndim)
    if len(set(res)) != len(res):
        raise CPTensorError(f"{name} must not repeat a mode, got {out}")
    return tuple(res)


def _normalize_key(key: Any, grid_sizes: tuple[int, ...], what: str) -> Key:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        key = (int(key),)
    try:
        k = tuple(int(i) for i in key)
    except TypeError:
        raise CPTensorTypeError(f"{what} key {key!r} must be a tuple of grid indices") from None
    if len(k) != len(grid_sizes) or any(not 0 <= i < s for i, s in zip(k, grid_sizes)):
        raise CPTensorKeyError(
            f"{what} key {key!r} does not index the block grid of sizes {grid_sizes} "
            "(one index per grid mode, in increasing mode order)"
        )
    return k


def _shard_indices(index: Any, count: Any, n_blocks: int) -> tuple[int, ...]:
    """Row-major block indices of shard ``index`` of ``count``: every ``count``-th block."""
    for what, v in (("index", index), ("count", count)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise CPTensorTypeError(f"{what} must be an int, got {type(v).__name__}")
    if not 1 <= count <= n_blocks or not 0 <= index < count:
        raise CPTensorError(
            f"shard({index}, {count}): expected 1 <= count <= {n_blocks} blocks and "
            "0 <= index < count"
        )
    return tuple(range(int(index), n_blocks, int(count)))


def _check_factors(factors: Sequence[Array], shape: tuple[int, ...]) -> tuple[list[Array], int]:
    if isinstance(factors, CPTensor):
        factors = factors.factors
    mats = list(factors)
    if len(mats) != len(shape):
        raise CPTensorError(
            f"factors has {len(mats)} matrices, expected {len(shape)} (one per mode of the "
            f"operator, shape {shape})"
        )
    names = [f"factors[{n}]" for n in range(len(mats))]
    namespace(*mats, names=names)
    check_same_device_dtype(mats, names)
    rank = int(mats[0].shape[1])
    for n, m in enumerate(mats):
        if m.ndim != 2 or int(m.shape[0]) != shape[n] or int(m.shape[1]) != rank:
            raise CPTensorError(
                f"factors[{n}] has shape {shape_tuple(m)}, expected ({shape[n]}, {rank}) "
                f"(mode {n} of the operator, shape {shape})"
            )
    return mats, rank


def _check_cp_shape(cp: Any, shape: tuple[int, ...]) -> CPTensor:
    if not isinstance(cp, CPTensor):
        raise CPTensorTypeError(f"cp must be a cptensor.CPTensor, got {type(cp).__name__}")
    if cp.shape != shape:
        raise CPTensorError(f"cp has shape {cp.shape} but the operator has shape {shape}")
    return cp


def _grid_weights(mats: Sequence[Array], grid_modes: Sequence[int], key: Key, skip: int = -1):
    """``Π_{k grid, k≠skip} A_k[key_k, :]`` (length R), or None when the product is empty."""
    w = None
    for k, i in zip(grid_modes, key):
        if k == skip:
            continue
        row = mats[k][i, :]
        w = row if w is None else w * row
    return w


def _check_matrices_for(matrices: Sequence[Array], shape: tuple[int, ...]) -> list[Array]:
    mats = list(matrices)
    if len(mats) != len(shape):
        raise CPTensorError(
            f"matrices has {len(mats)} entries, expected {len(shape)} (one per mode, shape {shape})"
        )
    names = [f"matrices[{n}]" for n in range(len(mats))]
    namespace(*mats, names=names)
    check_same_device_dtype(mats, names)
    for n, m in enumerate(mats):
        if m.ndim != 2 or int(m.shape[1]) != shape[n]:
            raise CPTensorError(
                f"matrices[{n}] has shape {shape_tuple(m)}, expected (J, {shape[n]}) "
                f"to multiply mode {n}"
            )
    return mats


def _sum_sq64(b: Array) -> float:
    """``Σ b²``: rows summed in ``b``'s dtype (at least float32), rows added in float64."""
    xp = namespace(b)
    if b.dtype not in (xp.float32, xp.float64):
        b = xp.astype(b, xp.float32)
    last = int(b.shape[-1]) if b.ndim else 1
    rows = xp.sum(xp.reshape(b * b, (-1, last)), axis=1)
    return scalar(xp.sum(float64_of(xp, rows)))


def _same_arrays(a: Sequence[Array], b: Sequence[Array]) -> bool:
    """Same shapes, dtypes, devices and values (used to reuse cached contractions)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if shape_tuple(x) != shape_tuple(y) or x.dtype != y.dtype or device(x) != device(y):
            return False
        if type(x) is not type(y):
            return False
        xp = namespace(x)
        if not bool(xp.all(x == y)):
            return False
    return True


class _GridLayout:
    """Grid modes, block modes and the iteration over block keys (row-major order)."""

    def __init__(self, shape: tuple[int, ...], block_modes: tuple[int, ...]) -> None:
        self.shape = shape
        self.block_modes = block_modes
        self.grid_modes = tuple(m for m in range(len(shape)) if m not in block_modes)
        self.block_sizes = tuple(shape[m] for m in block_modes)
        self.grid_sizes = tuple(shape[m] for m in self.grid_modes)

    def keys(self) -> Iterator[Key]:
        return itertools.product(*(range(s) for s in self.grid_sizes))

    @property
    def n_blocks(self) -> int:
        return math.prod(self.grid_sizes)

    def dense_axes(self) -> tuple[int, ...]:
        """Permutation taking an array of axes (grid…, block…) to tensor mode order."""
        src = list(self.grid_modes) + list(self.block_modes)
        return tuple(src.index(m) for m in range(len(self.shape)))


# -- BlockTensor ----------------------------------------------------------------------
class BlockTensor:
    """A tensor given as blocks along some of its modes, read lazily one block at a time.

    Parameters
    ----------
    shape:
        Shape of the whole (virtual) tensor, at least 2 modes.
    block_modes:
        The modes one block covers, in the order of the block's axes (after reshaping
        it to ``block_shape``'s element count). The other modes are the *grid* modes, in
        increasing order; ``(l, m)`` keys index them.
    blocks:
        A mapping ``key -> array`` or a callable ``key -> array`` with ``key`` a tuple of
        grid indices (an ``int`` is accepted as key of a single grid mode in a mapping).
        Blocks are NumPy arrays or torch tensors; they are requested again on every pass
        that needs them, so a callable should read from disk or compute rather than cache.
        Their values must not change while the tensor is in use: partial contractions
        are cached between MTTKRP calls (see Notes); after changing the blocks, call
        :meth:`clear_cache`.
    block_shape:
        The shape blocks are stored in (e.g. ``(d, d)`` for a weight matrix whose input
        dimension is split into heads). Default: the sizes of ``block_modes``. Each block
        is checked against it when read (a ``ValueError`` names the block otherwise) and
        reshaped row-major to the sizes of ``block_modes``.
    dtype:
        When given, each block is converted to this dtype (of the blocks' library) right
        after it is read, e.g. float16 storage computed in float32. Without it, the
        blocks' own dtype is used and must match the factors'.

    cache_bytes:
        Memory allowed for the cached partial contractions (default 1 GiB; 0 disables
        the cache and every MTTKRP reads all blocks).

    Notes
    -----
    The block modes are split in two; per block, the contraction with the factors of one
    part is kept between MTTKRP calls (``rank × ∏ sizes of the other part`` numbers per
    block, while they fit in ``cache_bytes``) and reused as long as those factors are
    unchanged (checked by value). An ALS sweep then reads every block twice. Peak memory
    is one block (plus its float64 copy in :meth:`residual_norm`), the factors and the
    cache: for the LoRTA tensor of Llama-2-7B at rank 64, 2 × 128 MiB.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import mttkrp
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((4, 6, 2, 3))
    >>> bt = BlockTensor(x.shape, (0, 1), lambda key: x[:, :, key[0], key[1]])
    >>> fs = [rng.standard_normal((n, 2)) for n in x.shape]
    >>> bool(np.allclose(mttkrp(bt, fs, 2), mttkrp(x, fs, 2)))
    True
    >>> bool(np.isclose(bt.norm(), np.linalg.norm(x)))
    True
    """

    __cptensor_operator__ = True

    def __init__(
        self,
        shape: Sequence[int],
        block_modes: Sequence[int],
        blocks: Mapping[Any, Array] | Callable[[Key], Array],
        *,
        block_shape: Sequence[int] | None = None,
        dtype: Any = None,
        cache_bytes: int = 2**30,
    ) -> None:
        shape = _check_shape(shape)
        bm = _check_modes(block_modes, len(shape), "block_modes")
        self._layout = _GridLayout(shape, bm)
        if isinstance(blocks, Mapping):
            table = {}
            for k, v in blocks.items():
                table[_normalize_key(k, self._layout.grid_sizes, "blocks")] = v
            missing = [k for k in self._layout.keys() if k not in table]
            if missing:
                raise CPTensorKeyError(
                    f"blocks is missing {len(missing)} of {self._layout.n_blocks} blocks, "
                    f"e.g. key {missing[0]} (grid sizes {self._layout.grid_sizes})"
                )
            self._get: Callable[[Key], Array] = table.__getitem__
        elif callable(blocks):
            self._get = blocks
        else:
            raise CPTensorTypeError(
                f"blocks must be a mapping or a callable key -> array, got {type(blocks).__name__}"
            )
        if block_shape is None:
            self._block_shape = self._layout.block_sizes
        else:
            self._block_shape = tuple(int(s) for s in block_shape)
            if math.prod(self._block_shape) != math.prod(self._layout.block_sizes):
                raise CPTensorError(
                    f"block_shape={self._block_shape} has {math.prod(self._block_shape)} "
                    f"elements but block_modes {bm} have sizes {self._layout.block_sizes} "
                    f"({math.prod(self._layout.block_sizes)} elements)"
                )
        self._dtype_arg = dtype
        self._probe: tuple[Any, Any] | None = None
        sizes = self._layout.block_sizes
        self._k = _best_split(sizes) if len(sizes) > 1 else 1
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, (int, np.integer)):
            raise CPTensorTypeError(f"cache_bytes must be an int, got {type(cache_bytes).__name__}")
        self._cache_bytes = int(cache_bytes)
        self._pcache: dict[str, tuple[list[Array], dict[Key, Array]]] = {}
        self._shard: frozenset[Key] | None = None

    # -- construction helpers ------------------------------------------------------------
    @classmethod
    def from_safetensors(
        cls,
        path: Any,
        names: Mapping[Any, str] | Callable[[Key], str],
        shape: Sequence[int],
        block_modes: Sequence[int],
        *,
        block_shape: Sequence[int] | None = None,
        dtype: Any = None,
        framework: str = "numpy",
    ) -> BlockTensor:
        """Blocks read one at a time from a safetensors file, memory-mapped.

        ``names`` maps each grid key to the name of its tensor in the file (a mapping or a
        callable). ``framework`` is ``"numpy"`` or ``"pt"`` (torch; needed for bfloat16).
        Each read maps just that tensor's bytes (no copy); with ``dtype`` the block is
        converted straight from the mapping, and the mapping is released when the block
        is dropped, so the file never becomes resident as a whole. An unknown name raises
        a ``KeyError`` naming it and the file.

        >>> import numpy as np, tempfile, os
        >>> from safetensors.numpy import save_file
        >>> x = np.arange(24.0).reshape(3, 4, 2)
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save_file({f"b{i}": np.ascontiguousarray(x[:, :, i]) for i in range(2)}, path)
        >>> bt = BlockTensor.from_safetensors(path, lambda k: f"b{k[0]}", x.shape, (0, 1))
        >>> bool(np.array_equal(bt.to_dense(), x))
        True
        """
        fw = {"numpy": "numpy", "np": "numpy", "pt": "pt", "torch": "pt"}.get(framework)
        if fw is None:
            raise CPTensorError(f"framework must be 'numpy' or 'pt', got {framework!r}")
        layout = _GridLayout(_check_shape(shape), _check_modes(block_modes, len(shape), "b"))
        if isinstance(names, Mapping):
            table = {_normalize_key(k, layout.grid_sizes, "names"): v for k, v in names.items()}
            lookup: Callable[[Key], str] = table.__getitem__
        else:
            lookup = names
        reader = SafetensorsFile(path)

        def read(key: Key) -> Array:
            return reader.read(lookup(key), fw)

        read.reader = reader  # type: ignore[attr-defined]
        return cls(shape, block_modes, read, block_shape=block_shape, dtype=dtype)

    def clear_cache(self) -> None:
        """Forget the cached partial contractions (needed after the blocks' values change).

        >>> import numpy as np
        >>> from cptensor import mttkrp
        >>> x = np.ones((2, 3, 2))
        >>> bt = BlockTensor(x.shape, (0, 1), lambda key: x[:, :, key[0]])
        >>> fs = [np.ones((n, 1)) for n in x.shape]
        >>> float(mttkrp(bt, fs, 2)[0, 0])
        6.0
        >>> x *= 2  # the blocks change...
        >>> bt.clear_cache()  # ...so the cache must go
        >>> float(mttkrp(bt, fs, 2)[0, 0])
        12.0
        """
        self._pcache.clear()

    # -- protocol ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the whole tensor."""
        return self._layout.shape

    @property
    def ndim(self) -> int:
        """The number of modes."""
        return len(self._layout.shape)

    @property
    def block_modes(self) -> tuple[int, ...]:
        """The modes a block covers, in the block's axis order."""
        return self._layout.block_modes

    @property
    def grid_modes(self) -> tuple[int, ...]:
        """The modes that index blocks, in increasing order."""
        return self._layout.grid_modes

    def keys(self) -> Iterator[Key]:
        """All block keys, in row-major grid order."""
        return self._layout.keys()

    def _owns(self, key: Key) -> bool:
        return self._shard is None or key in self._shard

    def _own_keys(self) -> Iterator[Key]:
        """The keys this tensor reads: all, or its shard's (see :meth:`shard`)."""
        if self._shard is None:
            return self._layout.keys()
        return (k for k in self._layout.keys() if k in self._shard)

    def shard(self, index: int, count: int) -> BlockTensor:
        """The part of this tensor that process ``index`` of ``count`` holds: every
        ``count``-th block in row-major order, starting at block ``index``. Its
        contractions (MTTKRP, norms, inner products, products with matrices,
        :meth:`to_dense`) are sums over its own blocks only, so the sums over all ``count``
        shards are those of the whole tensor: :class:`SumOverProcesses` adds them up
        across processes. Blocks are read from the same source; nothing is copied.

        >>> import numpy as np
        >>> from cptensor import mttkrp
        >>> x = np.arange(24.0).reshape(2, 3, 4)
        >>> bt = BlockTensor(x.shape, (0, 1), lambda key: x[:, :, key[0]])
        >>> parts = [bt.shard(i, 3) for i in range(3)]
        >>> fs = [np.ones((n, 2)) for n in x.shape]
        >>> bool(np.allclose(sum(mttkrp(p, fs, 2) for p in parts), mttkrp(x, fs, 2)))
        True
        >>> round(sum(p.norm() ** 2 for p in parts), 6) == round(float((x ** 2).sum()), 6)
        True
        """
        own = set(_shard_indices(index, count, self._layout.n_blocks))
        out = copy.copy(self)
        out._shard = frozenset(k for i, k in enumerate(self._layout.keys()) if i in own)
        out._probe = None
        out._pcache = {}
        return out

    def _probe_block(self) -> tuple[Any, Any]:
        if self._probe is None:
            b = self.block(next(iter(self._own_keys())))
            self._probe = (b.dtype, device(b))
        return self._probe

    @property
    def dtype(self) -> Any:
        """The dtype of the (converted) blocks; reads one block if ``dtype`` was not given."""
        if self._dtype_arg is not None:
            return self._dtype_arg
        return self._probe_block()[0]

    @property
    def device(self) -> Any:
        """The device of the blocks (reads one block the first time)."""
        return self._probe_block()[1]

    def block(self, key: Any) -> Array:
        """Read, check and reshape the block ``key`` to the sizes of ``block_modes``.

        Raises ``ValueError`` naming the block when its shape is not ``block_shape``.
        """
        key = _normalize_key(key, self._layout.grid_sizes, "block")
        raw = self._get(key)
        if not is_array(raw):
            raise CPTensorTypeError(
                f"block {key} is a {type(raw).__name__}, expected an array (NumPy or torch)"
            )
        if shape_tuple(raw) != self._block_shape:
            raise CPTensorError(
                f"block {key} has shape {shape_tuple(raw)}, expected {self._block_shape} "
                f"(block_modes {self._layout.block_modes} of tensor shape {self.shape})"
            )
        xp = namespace(raw)
        if self._dtype_arg is not None and raw.dtype != self._dtype_arg:
            raw = xp.astype(raw, self._dtype_arg)
        return xp.reshape(raw, self._layout.block_sizes)

    def _block_for(self, key: Key, like: Array) -> Array:
        b = self.block(key)
        if namespace(b) is not namespace(like) or b.dtype != like.dtype:
            raise CPTensorTypeError(
                f"block {key} is {type(b).__module__}.{type(b).__name__} of dtype {b.dtype} but "
                f"the factors are {type(like).__module__}.{type(like).__name__} of dtype "
                f"{like.dtype}; pass dtype= to BlockTensor to convert blocks when read"
            )
        if device(b) != device(like):
            raise CPTensorError(
                f"block {key} is on device {device(b)!r} but the factors are on "
                f"{device(like)!r}; cptensor never moves data between devices"
            )
        return b

    # -- MTTKRP: a two-level dimension tree per block, partials cached across calls ----
    #
    # The block modes are split into a left part L = block_modes[:k] and a right part
    # R = block_modes[k:]. For each block, the *left partial* B ×_R KR(A_R) has shape
    # (rank, *sizes(L)) and depends only on the right factors; the *right partial*
    # KR(A_L)ᵀ ×_L B has shape (rank, *sizes(R)) and depends only on the left factors.
    # Every MTTKRP (block or grid mode) is finished cheaply from one of them. ALS changes
    # one factor at a time, so after one pass that computes a partial, the following
    # modes reuse it: a full sweep over the 5-way LoRTA tensor reads the blocks twice,
    # not five times. Partials are kept (with copies of the factors they were computed
    # from, compared by value on reuse) while they fit in ``cache_bytes``.

    def _side_modes(self, side: str) -> tuple[int, ...]:
        bm = self._layout.block_modes
        return bm[: self._k] if side == "left" else bm[self._k :]

    def _partials(self, mats: Sequence[Array], side: str) -> Iterator[tuple[Key, Array]]:
        """``(key, partial)`` for every block, from the cache when it is valid."""
        lay = self._layout
        dep = self._side_modes("right" if side == "left" else "left")
        used = [mats[m] for m in dep]
        hit = self._pcache.get(side)
        if hit is not None and _same_arrays(hit[0], used):
            yield from hit[1].items()
            return
        self._pcache.pop(side, None)
        rank = int(mats[0].shape[1])
        item = getattr(mats[0].dtype, "itemsize", None) or np.dtype(mats[0].dtype).itemsize
        size = math.prod(lay.shape[m] for m in self._side_modes(side))
        keep = lay.n_blocks * rank * size * item <= self._cache_bytes
        store: dict[Key, Array] = {}
        kr = _khatri_rao(used, None, like=mats[0])
        left = math.prod(lay.block_sizes[: self._k])
        for key in self._own_keys():
            b = self._block_for(key, mats[0])
            xp = namespace(b)
            flat = xp.reshape(b, (left, -1))
            if side == "left":
                p = xp.reshape((flat @ kr).T, (rank, *lay.block_sizes[: self._k]))
            else:
                p = xp.reshape(kr.T @ flat, (rank, *lay.block_sizes[self._k :]))
            if keep:
                store[key] = p
            yield key, p
        if keep:
            self._pcache[side] = ([namespace(u).asarray(u, copy=True) for u in used], store)

    def _valid(self, mats: Sequence[Array], side: str) -> bool:
        hit = self._pcache.get(side)
        dep = self._side_modes("right" if side == "left" else "left")
        return hit is not None and _same_arrays(hit[0], [mats[m] for m in dep])

    def mttkrp(self, factors: Sequence[Array], mode: int) -> Array:
        """``unfold(X, mode) @ khatri_rao(factors, skip=mode)``, streamed over the blocks
        (or finished from cached partial contractions, see the class notes)."""
        mats, rank = _check_factors(factors, self.shape)
        mode = int(mode) % self.ndim
        lay = self._layout
        xp = namespace(mats[0])
        out = xp.zeros((self.shape[mode], rank), dtype=mats[0].dtype, device=device(mats[0]))
        if mode in lay.block_modes:
            j = lay.block_modes.index(mode)
            side = "left" if j < self._k else "right"
            sm = [mats[m] for m in self._side_modes(side)]
            jj = j if side == "left" else j - self._k
            for key, p in self._partials(mats, side):
                m = _contract_rank_first(p, sm, jj)
                w = _grid_weights(mats, lay.grid_modes, key)
                out = out + (m if w is None else m * w)
            return out
        side = "right" if self._side_modes("right") else "left"
        if not self._valid(mats, side) and self._valid(mats, "left"):
            side = "left"
        sm = [mats[m] for m in self._side_modes(side)]
        gi = lay.grid_modes.index(mode)
        for key, p in self._partials(mats, side):
            v = xp.sum(_contract_rank_first(p, sm, 0) * sm[0], axis=0)
            w = _grid_weights(mats, lay.grid_modes, key, skip=mode)
            i = key[gi]
            out[i, :] = out[i, :] + (v if w is None else v * w)
        return out

    def mttkrp_all(self, factors: Sequence[Array]) -> list[Array]:
        """The MTTKRP of every mode with the same factors (at most two passes)."""
        return [self.mttkrp(factors, n) for n in range(self.ndim)]

    def norm(self) -> float:
        """``‖X‖``, accumulated in float64 over the blocks."""
        total = 0.0
        for key in self._own_keys():
            total += _sum_sq64(self.block(key))
        return math.sqrt(total)

    def _block_cp(self, cp: CPTensor, key: Key) -> CPTensor:
        lay = self._layout
        sub = fix_modes(cp, dict(zip(lay.grid_modes, key))) if lay.grid_modes else cp
        order = sorted(lay.block_modes)  # fix_modes keeps the free modes in increasing order
        return CPTensor(sub.weights, [sub.factors[order.index(m)] for m in lay.block_modes])

    def residual_norm(self, cp: CPTensor) -> float:
        """``‖X − cp‖``, exact: each block minus its part of ``cp`` (via ``fix_modes``,
        reconstructed in the block's dtype), squared and summed along rows in that dtype
        and across rows in float64. No cancellation between ``‖X‖²`` and ``‖cp‖²``."""
        cp = _check_cp_shape(cp, self.shape)
        total = 0.0
        for key in self._own_keys():
            b = self._block_for(key, cp.factors[0])
            total += _sum_sq64(b - reconstruct(self._block_cp(cp, key)))
        return math.sqrt(total)

    def inner_cp(self, cp: CPTensor) -> float:
        """``⟨X, cp⟩`` streamed over the blocks (accumulated in float64)."""
        cp = _check_cp_shape(cp, self.shape)
        total = 0.0
        for key in self._own_keys():
            b = self._block_for(key, cp.factors[0])
            sub = self._block_cp(cp, key)
            xp = namespace(b)
            m = _mttkrp_one(b, list(sub.factors), 0)
            total += scalar(xp.sum(float64_of(xp, m * sub.factors[0] * sub.weights)))
        return total

    def multi_mode_product(self, matrices: Sequence[Array]) -> Array:
        """``X ×_0 M_0 … ×_{N-1} M_{N-1}`` (every mode), streamed; ``M_n`` is ``(J_n, I_n)``."""
        mats = _check_matrices_for(matrices, self.shape)
        lay = self._layout
        xp = namespace(mats[0])
        jb = [int(mats[m].shape[0]) for m in lay.block_modes]
        jg = [int(mats[m].shape[0]) for m in lay.grid_modes]
        acc = xp.zeros((math.prod(jb), math.prod(jg)), dtype=mats[0].dtype, device=device(mats[0]))
        for key in self._own_keys():
            t = self._block_for(key, mats[0])
            order = sorted(range(len(jb)), key=lambda j: jb[j] / lay.block_sizes[j])
            for j in order:  # shrink the most-reducing mode first
                moved = xp.moveaxis(t, j, -1)
                t = xp.moveaxis(xp.matmul(moved, mats[lay.block_modes[j]].T), -1, j)
            if lay.grid_modes:
                cols = [mats[gm][:, i][None, :] for gm, i in zip(lay.grid_modes, key)]
                g = xp.reshape(kronecker(cols), (-1,))
                acc = acc + xp.reshape(t, (-1, 1)) * g[None, :]
            else:
                acc = acc + xp.reshape(t, (-1, 1))
        core = xp.reshape(acc, (*jb, *jg))
        src = list(lay.block_modes) + list(lay.grid_modes)
        return xp.permute_dims(core, tuple(src.index(m) for m in range(self.ndim)))

    def unfolding_gram(self, mode: int) -> Array:
        """``X_(n) X_(n)ᵀ``, ``(I_n, I_n)``. For a grid mode this reads pairs of blocks
        (``I_n`` times more reads than one pass); for a block mode, one pass."""
        mode = int(mode) % self.ndim
        lay = self._layout
        out = None
        if self._shard is not None and mode not in lay.block_modes:
            raise CPTensorError(
                f"unfolding_gram({mode}) of a shard: a grid mode's Gram pairs blocks of "
                "different shards; compute it on the whole tensor"
            )
        if mode in lay.block_modes:
            j = lay.block_modes.index(mode)
            for key in self._own_keys():
                b = self.block(key)
                xp = namespace(b)
                u = xp.reshape(xp.moveaxis(b, j, 0), (self.shape[mode], -1))
                g = u @ u.T
                out = g if out is None else out + g
            return out
        gi = lay.grid_modes.index(mode)
        n = self.shape[mode]
        rest = [range(s) for k, s in enumerate(lay.grid_sizes) if k != gi]
        entries: dict[tuple[int, int], float] = {}
        like = None
        for other in itertools.product(*rest):

            def full(i: int, other: tuple[int, ...] = other) -> Key:
                return (*other[:gi], i, *other[gi:])

            for i in range(n):
                bi = self.block(full(i))
                xp = namespace(bi)
                like = bi
                for i2 in range(i, n):
                    b2 = bi if i2 == i else self.block(full(i2))
                    v = scalar(xp.sum(float64_of(xp, bi) * float64_of(xp, b2)))
                    entries[(i, i2)] = entries.get((i, i2), 0.0) + v
        g = np.zeros((n, n))
        for (i, i2), v in entries.items():
            g[i, i2] = g[i2, i] = v
        xp = namespace(like)
        return xp.asarray(g, dtype=like.dtype, device=device(like))

    def to_dense(self) -> Array:
        """The dense tensor (for tests and small cases only; a shard's blocks, zeros
        elsewhere)."""
        lay = self._layout
        own = {k: self.block(k) for k in self._own_keys()}
        like = next(iter(own.values()))
        xp = namespace(like)
        zero = xp.zeros_like(like)
        bs = [own.get(k, zero) for k in lay.keys()]
        stacked = xp.reshape(xp.stack(bs), (*lay.grid_sizes, *lay.block_sizes))
        return xp.permute_dims(stacked, lay.dense_axes())

    def __repr__(self) -> str:
        return (
            f"BlockTensor(shape={self.shape}, block_modes={self.block_modes}, "
            f"block_shape={self._block_shape}, n_blocks={self._layout.n_blocks})"
        )


# -- LowRankBlockTensor ---------------------------------------------------------------
class LowRankBlockTensor:
    """A tensor whose blocks are low-rank matrices ``U Vᵀ``, never formed.

    Parameters
    ----------
    shape:
        Shape of the whole (virtual) tensor.
    row_modes:
        The modes that ``U``'s rows are reshaped into (row-major), e.g. ``(0,)``.
    col_modes:
        The modes that ``V``'s rows (the block's columns) are reshaped into, e.g.
        ``(1, 2)`` for an input dimension ``d`` split as ``(d_h, H)``.
    factors:
        A mapping or a callable ``key -> (U, V)`` over all grid keys (the modes in neither
        ``row_modes`` nor ``col_modes``, increasing order), with ``U`` of shape
        ``(∏ row sizes, s)`` and ``V`` of shape ``(∏ col sizes, s)``; ``s`` may differ per
        block. ``None`` in place of a pair is a zero block. A LoRA update ``B A`` (``B``:
        ``(d_out, r)``, ``A``: ``(r, d_in)``) is the pair ``(B, A.T)``; fold its scaling
        into ``B``.

    Notes
    -----
    LoRTA layout: for the tensor ``(d, d_h, H, L, M)`` use ``row_modes=(0,)`` and
    ``col_modes=(1, 2)``. A matrix whose heads split its *input* (O) is given as
    ``(B, A.T)`` (``d_out`` rows → mode 0, ``d_in = d_h·H`` → modes 1, 2); one whose heads
    split its *output* (Q, K, V) is given transposed, ``(A.T, B)``, since the block of the
    tensor is then ``ΔWᵀ``. Whether ``d_in`` reshapes to ``(d_h, H)`` or ``(H, d_h)`` is
    the order of ``col_modes``: ``(2, 1)`` reads it as ``(H, d_h)``.

    The pairs are read on first use (as :class:`BlockTensor` reads its blocks; a bad
    pair raises then, naming its block) and stacked, padding smaller ranks with zero
    columns, which changes nothing: ``(∏ row sizes) · n_blocks · s_max`` numbers for
    ``U``, likewise for ``V``, held from then on. MTTKRP costs a few GEMMs of that size
    with the factors. :meth:`shard` gives a process a part that reads and holds only its
    own blocks' pairs.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import mttkrp
    >>> rng = np.random.default_rng(0)
    >>> pairs = {(l,): (rng.standard_normal((4, 2)), rng.standard_normal((6, 2))) for l in range(3)}
    >>> lr = LowRankBlockTensor((4, 3, 2, 3), (0,), (1, 2), pairs)
    >>> x = lr.to_dense()
    >>> bool(np.allclose(x[:, :, :, 1], (pairs[(1,)][0] @ pairs[(1,)][1].T).reshape(4, 3, 2)))
    True
    >>> fs = [rng.standard_normal((n, 5)) for n in x.shape]
    >>> all(bool(np.allclose(mttkrp(lr, fs, n), mttkrp(x, fs, n))) for n in range(4))
    True
    """

    __cptensor_operator__ = True

    def __init__(
        self,
        shape: Sequence[int],
        row_modes: Sequence[int],
        col_modes: Sequence[int],
        factors: Mapping[Any, tuple[Array, Array] | None]
        | Callable[[Key], tuple[Array, Array] | None],
    ) -> None:
        shape = _check_shape(shape)
        rm = _check_modes(row_modes, len(shape), "row_modes")
        cm = _check_modes(col_modes, len(shape), "col_modes")
        if set(rm) & set(cm):
            raise CPTensorError(f"row_modes {rm} and col_modes {cm} must not share a mode")
        self._layout = _GridLayout(shape, rm + cm)
        self._row_modes, self._col_modes = rm, cm
        self._row_sizes = tuple(shape[m] for m in rm)
        self._col_sizes = tuple(shape[m] for m in cm)
        p, q = math.prod(self._row_sizes), math.prod(self._col_sizes)
        lay = self._layout
        if isinstance(factors, Mapping):
            table = {_normalize_key(k, lay.grid_sizes, "factors"): v for k, v in factors.items()}
            missing = [k for k in lay.keys() if k not in table]
            if missing:
                raise CPTensorKeyError(
                    f"factors is missing {len(missing)} of {lay.n_blocks} blocks, e.g. key "
                    f"{missing[0]} (grid sizes {lay.grid_sizes}); give None for a zero block"
                )
            get: Callable[[Key], Any] = table.__getitem__
        elif callable(factors):
            get = factors
        else:
            raise CPTensorTypeError(
                "factors must be a mapping or a callable key -> (U, V), "
                f"got {type(factors).__name__}"
            )
        self._get = get
        self._pq = (p, q)
        self._own: tuple[int, ...] | None = None  # row-major block indices held; None: all
        self._shard_of: tuple[int, int] | None = None
        self._data: _Stacks | None = None
        self._norm_sq: float | None = None
        self._cache: dict[str, tuple[list[Array], Array]] = {}

    def _stacks(self) -> _Stacks:
        """``U`` and ``V`` of the blocks held, read (once) on first use."""
        if self._data is None:
            self._data = self._read()
        return self._data

    def _read(self) -> _Stacks:
        p, q = self._pq
        rm, cm = self._row_modes, self._col_modes
        keys = list(self._layout.keys())
        if self._own is not None:
            keys = [keys[i] for i in self._own]
        pairs: list[tuple[Array, Array] | None] = []
        first = None
        for key in keys:
            pair = self._get(key)
            if pair is None:
                pairs.append(None)
                continue
            try:
                u, v = pair
            except (TypeError, ValueError):
                raise CPTensorTypeError(
                    f"block {key}: expected a pair (U, V) or None, got {type(pair).__name__}"
                ) from None
            namespace(u, v, names=[f"U of block {key}", f"V of block {key}"])
            if u.ndim != 2 or v.ndim != 2 or int(u.shape[1]) != int(v.shape[1]):
                raise CPTensorError(
                    f"block {key}: U has shape {shape_tuple(u)} and V has shape "
                    f"{shape_tuple(v)}, expected ({p}, s) and ({q}, s)"
                )
            if int(u.shape[0]) != p or int(v.shape[0]) != q:
                raise CPTensorError(
                    f"block {key}: U has shape {shape_tuple(u)} and V has shape "
                    f"{shape_tuple(v)}, expected ({p}, s) and ({q}, s) for row modes {rm} "
                    f"(sizes {self._row_sizes}) and col modes {cm} (sizes {self._col_sizes})"
                )
            if first is None:
                first = u
            namespace(first, u, v, names=["the first U", f"U of block {key}", f"V of block {key}"])
            check_same_device_dtype(
                [first, u, v], ["the first U", f"U of block {key}", f"V of block {key}"]
            )
            pairs.append((u, v))
        if first is None:
            if self._shard_of is not None:
                index, count = self._shard_of
                raise CPTensorError(
                    f"shard({index}, {count}): all {len(keys)} blocks of this shard are None "
                    "(zero), so it has no dtype or device; use fewer processes"
                )
            raise CPTensorError("all blocks are None (zero); give at least one (U, V) pair")
        xp = namespace(first)
        s_max = max(int(pr[0].shape[1]) for pr in pairs if pr is not None)
        s_max = max(s_max, 1)
        dt, dev = first.dtype, device(first)

        def padded(a: Array | None, rows: int) -> Array:
            if a is None:
                return xp.zeros((rows, s_max), dtype=dt, device=dev)
            s = int(a.shape[1])
            if s == s_max:
                return a
            return xp.concat([a, xp.zeros((rows, s_max - s), dtype=dt, device=dev)], axis=1)

        # Stored as (p, G, S) and (q, G, S): reshaping to (p, G·S) is a free view, and
        # every contraction over rows is one GEMM with all blocks at once.
        u = xp.stack([padded(None if pr is None else pr[0], p) for pr in pairs], axis=1)
        v = xp.stack([padded(None if pr is None else pr[1], q) for pr in pairs], axis=1)
        return _Stacks(u, v, s_max, xp)

    @property
    def _u(self) -> Array:
        return self._stacks().u

    @property
    def _v(self) -> Array:
        return self._stacks().v

    @property
    def _s(self) -> int:
        return self._stacks().s

    @property
    def _xp(self) -> Any:
        return self._stacks().xp

    @property
    def _g(self) -> int:
        """The number of blocks held (all, or this shard's)."""
        return self._layout.n_blocks if self._own is None else len(self._own)

    # -- protocol ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the whole tensor."""
        return self._layout.shape

    @property
    def ndim(self) -> int:
        """The number of modes."""
        return len(self._layout.shape)

    @property
    def dtype(self) -> Any:
        """The dtype of ``U`` and ``V``."""
        return self._u.dtype

    @property
    def device(self) -> Any:
        """The device of ``U`` and ``V``."""
        return device(self._u)

    @property
    def row_modes(self) -> tuple[int, ...]:
        """The modes of ``U``'s rows."""
        return self._row_modes

    @property
    def col_modes(self) -> tuple[int, ...]:
        """The modes of ``V``'s rows."""
        return self._col_modes

    @property
    def grid_modes(self) -> tuple[int, ...]:
        """The modes that index blocks, increasing."""
        return self._layout.grid_modes

    @property
    def max_block_rank(self) -> int:
        """The largest ``s`` over the blocks held (smaller ones are zero-padded to it)."""
        return self._s

    def keys(self) -> Iterator[Key]:
        """All block keys, in row-major grid order."""
        return self._layout.keys()

    def shard(self, index: int, count: int) -> LowRankBlockTensor:
        """The part of this tensor that process ``index`` of ``count`` holds: every
        ``count``-th block in row-major order, starting at block ``index`` (the blocks
        :meth:`BlockTensor.shard` would give). It reads the pairs of its own blocks only,
        on first use, and holds only their ``U`` and ``V`` (taken from this tensor's,
        without reading again, when this one has read them already). Its contractions
        (MTTKRP, norms, inner products, products with matrices, :meth:`gram` of a row or
        column mode, :meth:`to_dense`) are sums over its own blocks, so the sums over all
        ``count`` shards are those of the whole tensor:
        :class:`~cptensor.distributed.SumOverProcesses` adds them up across processes.
        The Gram of a grid mode pairs blocks of different shards and is refused.

        Raises ``ValueError`` when ``count`` is not in ``1 … n_blocks`` or ``index`` not in
        ``0 … count - 1``, and (on first use) when every block of the shard is ``None``.

        >>> import numpy as np
        >>> from cptensor import mttkrp
        >>> rng = np.random.default_rng(0)
        >>> pairs = {(l,): (rng.standard_normal((4, 2)), rng.standard_normal((6, 2)))
        ...          for l in range(3)}
        >>> read = []
        >>> lr = LowRankBlockTensor((4, 3, 2, 3), (0,), (1, 2),
        ...                         lambda key: read.append(key) or pairs[key])
        >>> parts = [lr.shard(i, 2) for i in range(2)]
        >>> fs = [rng.standard_normal((n, 5)) for n in lr.shape]
        >>> x = np.stack([(u @ v.T).reshape(4, 3, 2) for u, v in pairs.values()], axis=-1)
        >>> bool(np.allclose(sum(mttkrp(p, fs, 3) for p in parts), mttkrp(x, fs, 3)))
        True
        >>> read  # each block read once, by its own shard
        [(0,), (2,), (1,)]
        """
        own = _shard_indices(index, count, self._layout.n_blocks)
        out = copy.copy(self)
        out._own, out._shard_of = own, (int(index), int(count))
        out._norm_sq, out._cache, out._data = None, {}, None
        held = range(self._layout.n_blocks) if self._own is None else self._own
        if self._data is not None and set(own) <= set(held):
            xp = self._data.xp
            pos = {g: j for j, g in enumerate(held)}
            idx = xp.asarray([pos[g] for g in own], dtype=xp.int64, device=self.device)
            u = xp.take(self._data.u, idx, axis=1)
            v = xp.take(self._data.v, idx, axis=1)
            out._data = _Stacks(u, v, self._data.s, xp)
        return out

    def _own_rows(self, a: Array) -> Array:
        """The rows of ``a`` (one per block of the whole grid) of the blocks held."""
        if self._own is None:
            return a
        xp = self._xp
        idx = xp.asarray(self._own, dtype=xp.int64, device=device(a))
        return xp.take(a, idx, axis=0)

    def _grid_rows(self, a: Array) -> Array:
        """``a`` (one row per block held) spread over the whole grid, zero elsewhere."""
        if self._own is None:
            return a
        xp = self._xp
        zero = xp.zeros((1, *shape_tuple(a)[1:]), dtype=a.dtype, device=device(a))
        pos = [self._g] * self._layout.n_blocks
        for j, g in enumerate(self._own):
            pos[g] = j
        idx = xp.asarray(pos, dtype=xp.int64, device=device(a))
        return xp.take(xp.concat([a, zero], axis=0), idx, axis=0)

    def _check(self, factors: Sequence[Array]) -> tuple[list[Array], int]:
        mats, rank = _check_factors(factors, self.shape)
        check_same_device_dtype([self._u, mats[0]], ["the operator's U", "factors[0]"])
        namespace(self._u, mats[0], names=["the operator's U", "factors[0]"])
        return mats, rank

    def _flat(self, which: str) -> Array:
        a = self._u if which == "u" else self._v
        return self._xp.reshape(a, (int(a.shape[0]), -1))  # (p, G·S)

    def _side(self, mats: Sequence[Array], modes: Sequence[int], which: str) -> Array:
        """``c[g·S + s, r] = Σ_i side[i, g, s] KR(modes)[i, r]``, shape ``(G·S, R)``.

        The last result of each side is kept with copies of its factors: ALS changes one
        factor at a time, so the side whose factors did not change is reused (a value
        comparison of the small factors, never a stale result)."""
        used = [mats[m] for m in modes]
        hit = self._cache.get(which)
        if hit is not None and _same_arrays(hit[0], used):
            return hit[1]
        kr = _khatri_rao(used, None, like=mats[0])
        out = self._flat(which).T @ kr
        xp = self._xp
        self._cache[which] = ([xp.asarray(m, copy=True) for m in used], out)
        return out

    def _gridw(self, mats: Sequence[Array]) -> Array:
        """``w[g, r] = Π_{k grid} A_k[g_k, r]`` over the blocks held, shape ``(G, R)``."""
        kept = [mats[m] for m in self._layout.grid_modes]
        return self._own_rows(_khatri_rao(kept, None, like=mats[0]))

    def _rep(self, w: Array) -> Array:
        """``w`` (G, R) repeated S times along rows: ``(G·S, R)``."""
        xp = self._xp
        g, r = int(w.shape[0]), int(w.shape[1])
        return xp.reshape(xp.broadcast_to(w[:, None, :], (g, self._s, r)), (g * self._s, r))

    def _finish_side(
        self, mats: Sequence[Array], modes: Sequence[int], sizes: Sequence[int], y: Array, j: int
    ) -> Array:
        """From ``y[i, r]`` over the side's flat rows, contract all side modes except ``j``."""
        if len(modes) == 1:
            return y
        xp = self._xp
        rank = int(y.shape[1])
        p = xp.reshape(y.T, (rank, *sizes))
        return _contract_rank_first(p, [mats[m] for m in modes], j)

    def _mode_from(self, mats: Sequence[Array], n: int, crow: Array, ccol: Array) -> Array:
        xp = self._xp
        lay = self._layout
        if n in self._row_modes:
            y = self._flat("u") @ (ccol * self._rep(self._gridw(mats)))
            return self._finish_side(
                mats, self._row_modes, self._row_sizes, y, self._row_modes.index(n)
            )
        if n in self._col_modes:
            y = self._flat("v") @ (crow * self._rep(self._gridw(mats)))
            return self._finish_side(
                mats, self._col_modes, self._col_sizes, y, self._col_modes.index(n)
            )
        rank = int(crow.shape[1])
        v = xp.sum(xp.reshape(crow * ccol, (self._g, self._s, rank)), axis=1)  # (G, R)
        v = self._grid_rows(v)  # a shard's blocks in the whole grid, zero elsewhere
        gi = lay.grid_modes.index(n)
        if len(lay.grid_modes) == 1:
            return v
        p = xp.reshape(v.T, (rank, *lay.grid_sizes))
        return _contract_rank_first(p, [mats[m] for m in lay.grid_modes], gi)

    def mttkrp(self, factors: Sequence[Array], mode: int) -> Array:
        """``unfold(X, mode) @ khatri_rao(factors, skip=mode)`` from ``U`` and ``V`` alone."""
        mats, _ = self._check(factors)
        mode = int(mode) % self.ndim
        crow = None if mode in self._row_modes else self._side(mats, self._row_modes, "u")
        ccol = None if mode in self._col_modes else self._side(mats, self._col_modes, "v")
        return self._mode_from(mats, mode, crow, ccol)

    def mttkrp_all(self, factors: Sequence[Array]) -> list[Array]:
        """The MTTKRP of every mode, sharing the contractions of ``U`` and ``V``."""
        mats, _ = self._check(factors)
        crow = self._side(mats, self._row_modes, "u")
        ccol = self._side(mats, self._col_modes, "v")
        return [self._mode_from(mats, n, crow, ccol) for n in range(self.ndim)]

    def _block_inner(self) -> np.ndarray:
        """``P[g, g'] = ⟨U_g V_gᵀ, U_g' V_g'ᵀ⟩`` in float64, as a NumPy ``(G, G)`` array."""
        xp = self._xp
        u = float64_of(xp, self._flat("u"))
        v = float64_of(xp, self._flat("v"))
        prod = (u.T @ u) * (v.T @ v)  # (G·S, G·S)
        g = self._g
        out = xp.sum(xp.reshape(prod, (g, self._s, g, self._s)), axis=(1, 3))
        from ._backend import to_numpy

        return to_numpy(out)

    def _sq_norm(self) -> float:
        if self._norm_sq is None:
            xp = self._xp
            u = float64_of(xp, self._u)  # (p, G, S)
            v = float64_of(xp, self._v)
            uu = xp.matmul(xp.permute_dims(u, (1, 2, 0)), xp.permute_dims(u, (1, 0, 2)))
            vv = xp.matmul(xp.permute_dims(v, (1, 2, 0)), xp.permute_dims(v, (1, 0, 2)))
            self._norm_sq = max(scalar(xp.sum(uu * vv)), 0.0)
        return self._norm_sq

    def norm(self) -> float:
        """``‖X‖`` from ``Σ_g ⟨U_gᵀU_g, V_gᵀV_g⟩`` in float64."""
        return math.sqrt(self._sq_norm())

    def inner_cp(self, cp: CPTensor) -> float:
        """``⟨X, cp⟩`` in float64."""
        cp = _check_cp_shape(cp, self.shape)
        mats, _ = self._check(cp.factors)
        xp = self._xp
        m64 = [float64_of(xp, m) for m in mats]
        u = float64_of(xp, self._flat("u"))
        v = float64_of(xp, self._flat("v"))
        crow = u.T @ _khatri_rao([m64[m] for m in self._row_modes], None, like=m64[0])
        ccol = v.T @ _khatri_rao([m64[m] for m in self._col_modes], None, like=m64[0])
        g, rank = self._g, cp.rank
        val = xp.sum(xp.reshape(crow * ccol, (g, self._s, rank)), axis=1)  # (G, R)
        w = self._own_rows(
            _khatri_rao([m64[m] for m in self._layout.grid_modes], None, like=m64[0])
        )
        return scalar(xp.sum(val * w * float64_of(xp, cp.weights)))

    def residual_norm(self, cp: CPTensor) -> float:
        """``‖X − cp‖`` from ``‖X‖² + ‖cp‖² − 2⟨X, cp⟩`` evaluated entirely in float64
        (no block is formed; relative accuracy about 1e-8 of ``‖X‖``)."""
        cp = _check_cp_shape(cp, self.shape)
        xp = self._xp
        m64 = [float64_of(xp, m) for m in cp.factors]
        w64 = float64_of(xp, cp.weights)
        gram = None
        grid = self._layout.grid_modes
        for k, m in enumerate(m64):
            if self._own is not None and k in grid:
                continue
            gm = m.T @ m
            gram = gm if gram is None else gram * gm
        if self._own is not None:  # ‖cp‖² over the blocks held: grid rows of those only
            w = self._own_rows(_khatri_rao([m64[k] for k in grid], None, like=m64[0]))
            gram = gram * (w.T @ w)
        cp_sq = scalar(w64 @ (gram @ w64))
        sq = self._sq_norm() + cp_sq - 2.0 * self.inner_cp(cp)
        return math.sqrt(max(sq, 0.0))

    def multi_mode_product(self, matrices: Sequence[Array]) -> Array:
        """``X ×_0 M_0 … ×_{N-1} M_{N-1}`` (every mode) from ``U`` and ``V``."""
        mats = _check_matrices_for(matrices, self.shape)
        check_same_device_dtype([self._u, mats[0]], ["the operator's U", "matrices[0]"])
        xp = self._xp
        lay = self._layout
        g, s = self._g, self._s

        def side(a: Array, modes: Sequence[int], sizes: Sequence[int]) -> tuple[Array, list[int]]:
            t = xp.reshape(a, (*sizes, g, s))
            for j, m in enumerate(modes):
                moved = xp.moveaxis(t, j, -1)
                t = xp.moveaxis(xp.matmul(moved, mats[m].T), -1, j)
            js = [int(mats[m].shape[0]) for m in modes]
            return xp.reshape(t, (math.prod(js), g, s)), js

        ut, jr = side(self._u, self._row_modes, self._row_sizes)
        vt, jc = side(self._v, self._col_modes, self._col_sizes)
        # t[g, a, b] = Σ_s ut[a, g, s] vt[b, g, s]
        t = xp.matmul(xp.permute_dims(ut, (1, 0, 2)), xp.permute_dims(vt, (1, 2, 0)))
        jg = [int(mats[m].shape[0]) for m in lay.grid_modes]
        if lay.grid_modes:
            k = self._own_rows(kronecker([mats[m].T for m in lay.grid_modes]))  # (G, ∏ J_grid)
            core = xp.reshape(t, (g, -1)).T @ k
        else:
            core = xp.reshape(t, (-1, 1))
        core = xp.reshape(core, (*jr, *jc, *jg))
        src = list(self._row_modes) + list(self._col_modes) + list(lay.grid_modes)
        return xp.permute_dims(core, tuple(src.index(m) for m in range(self.ndim)))

    def gram(self, mode: int) -> Array:
        """``X_(n) X_(n)ᵀ``, ``(I_n, I_n)``, from ``U`` and ``V`` (also as :meth:`gram`)."""
        mode = int(mode) % self.ndim
        xp = self._xp
        lay = self._layout
        g, s = self._g, self._s
        if mode in lay.grid_modes and self._own is not None:
            raise CPTensorError(
                f"gram({mode}) of a shard: a grid mode's Gram pairs blocks of different "
                "shards; compute it on the whole tensor"
            )
        if mode in lay.grid_modes:
            pg = xp.asarray(self._block_inner(), dtype=self.dtype, device=self.device)
            gi = lay.grid_modes.index(mode)
            n = self.shape[mode]
            t = xp.reshape(pg, (*lay.grid_sizes, *lay.grid_sizes))
            k = len(lay.grid_sizes)
            t = xp.moveaxis(t, (gi, k + gi), (0, 1))
            rest = g // n
            t = xp.reshape(t, (n, n, rest, rest))
            idx = xp.arange(rest, device=self.device)
            return xp.sum(t[:, :, idx, idx], axis=2)
        if mode in self._row_modes:
            a, b, modes, sizes = self._u, self._v, self._row_modes, self._row_sizes
        else:
            a, b, modes, sizes = self._v, self._u, self._col_modes, self._col_sizes
        # K_g = B_gᵀ B_g (S × S); Gram = Σ_g Σ_other A_g[i, other, :] K_g A_g[i', other, :]ᵀ
        bg = xp.permute_dims(b, (1, 0, 2))  # (G, q, S)
        kk = xp.matmul(xp.permute_dims(bg, (0, 2, 1)), bg)  # (G, S, S)
        ag = xp.permute_dims(a, (1, 0, 2))  # (G, p, S)
        w = xp.matmul(ag, kk)  # (G, p, S)
        j = modes.index(mode)
        n = self.shape[mode]

        def unf(t: Array) -> Array:
            t = xp.reshape(t, (g, *sizes, s))
            return xp.reshape(xp.moveaxis(t, j + 1, 0), (n, -1))

        return unf(w) @ unf(ag).T

    def unfolding_gram(self, mode: int) -> Array:
        """``X_(n) X_(n)ᵀ`` (the same as :meth:`gram`)."""
        return self.gram(mode)

    def to_dense(self) -> Array:
        """The dense tensor (for tests and small cases only)."""
        xp = self._xp
        lay = self._layout
        ug = xp.permute_dims(self._u, (1, 0, 2))  # (G, p, S)
        vg = xp.permute_dims(self._v, (1, 2, 0))  # (G, S, q)
        blocks = self._grid_rows(xp.matmul(ug, vg))  # (G, p, q), zero outside a shard
        stacked = xp.reshape(blocks, (*lay.grid_sizes, *self._row_sizes, *self._col_sizes))
        return xp.permute_dims(stacked, lay.dense_axes())

    def __repr__(self) -> str:
        return (
            f"LowRankBlockTensor(shape={self.shape}, row_modes={self.row_modes}, "
            f"col_modes={self.col_modes}, n_blocks={self._layout.n_blocks}"
            + ("" if self._shard_of is None else f", shard={self._shard_of}")
            + ("" if self._data is None else f", max_block_rank={self._data.s}")
            + ")"
        )
