"""CP fits of a tensor spread over processes: :class:`SumOverProcesses`.

A tensor too large for one machine's time or memory — the attention delta of a 70B model
— is split into blocks, and each process reads only its own
(:meth:`cptensor.structured.BlockTensor.shard`, or
:meth:`cptensor.structured.LowRankBlockTensor.shard` for a LoRA delta kept as its
factors). Every contraction ALS needs is a sum over
blocks (the MTTKRPs, ``‖X‖²``, ``‖X − M‖²``, ``⟨X, M⟩``), so each process computes its
part and the parts are added across processes. :class:`SumOverProcesses` wraps the local
part and a sum-reduction (by default ``torch.distributed.all_reduce``); ``fit_als``,
``rank_sweep`` and the diagnostics take it like any other tensor. With the same seed,
every process draws the same start, receives the same sums and so computes the same
factors: the fit equals one process's to round-off (the sums are added in another
order), and each process holds only its blocks.

The core needs no ``torch``: any ``reduce(array) -> array`` that sums over processes
works (MPI's ``Allreduce``, a test double); :func:`torch_sum` is the one for
``torch.distributed``.

Examples
--------
With one process the sum is the part itself (``reduce`` the identity); under
``torch.distributed`` each process passes ``whole.shard(rank, world)`` and the default
reduction:

>>> import numpy as np
>>> from cptensor import fit_als
>>> from cptensor.structured import BlockTensor
>>> x = np.random.default_rng(0).standard_normal((6, 5, 4))
>>> whole = BlockTensor(x.shape, (0, 1), lambda key: x[:, :, key[0]])
>>> op = SumOverProcesses(whole.shard(0, 1), reduce=lambda v: v)
>>> a, b = fit_als(op, 2, seed=0, max_iter=20), fit_als(whole, 2, seed=0, max_iter=20)
>>> bool(np.isclose(a.fit, b.fit))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._backend import Array
from .errors import CPTensorError, CPTensorTypeError
from .operator import is_operator

__all__ = ["SumOverProcesses", "shard_over_processes", "torch_sum"]


def torch_sum(group: Any = None) -> Callable[[Array], Array]:
    """A reduction that sums an array over the processes of ``torch.distributed`` (the
    default group, or ``group``): NumPy arrays go through a CPU tensor and come back as
    NumPy, torch tensors stay on their device. Every process must call it at the same
    point, as with any collective.

    Examples
    --------
    >>> reduce = torch_sum()   # needs torch; call it only under torch.distributed
    >>> callable(reduce)
    True
    """

    def reduce(value: Array) -> Array:
        import torch
        import torch.distributed as dist

        if isinstance(value, torch.Tensor):
            t = value.detach().clone().contiguous()
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
            return t
        t = torch.from_numpy(np.array(value, copy=True, order="C"))  # reduced in place
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return t.numpy()

    return reduce


class SumOverProcesses:
    """The tensor whose value is the sum, over processes, of each process's ``local``
    part: an operator for ``fit_als``, ``rank_sweep``, ``norm``, ``mttkrp`` and the
    diagnostics (see the module docstring).

    Parameters
    ----------
    local : TensorOperator
        This process's part, e.g. ``BlockTensor.shard(rank, world)`` or
        ``LowRankBlockTensor.shard(rank, world)``: a tensor of the whole shape whose
        contractions cover this process's blocks only.
    reduce : callable, optional
        ``reduce(array) -> array``: the sum of ``array`` over all processes, returned to
        every process (default: :func:`torch_sum` over the default group). Each method
        calls it once or twice; every process must call the same methods in the same
        order.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import mttkrp
    >>> from cptensor.structured import BlockTensor
    >>> x = np.arange(24.0).reshape(2, 3, 4)
    >>> part = BlockTensor(x.shape, (0, 1), lambda key: x[:, :, key[0]]).shard(0, 1)
    >>> op = SumOverProcesses(part, reduce=lambda v: v)   # one process: the sum is itself
    >>> fs = [np.ones((n, 2)) for n in x.shape]
    >>> bool(np.allclose(mttkrp(op, fs, 1), mttkrp(x, fs, 1))), round(op.norm() ** 2)
    (True, 4324)
    """

    __cptensor_operator__ = True

    def __init__(self, local: Any, reduce: Callable[[Array], Array] | None = None) -> None:
        if not is_operator(local):
            raise CPTensorTypeError(
                f"local: expected a tensor operator (e.g. BlockTensor.shard(...)), got "
                f"{type(local).__name__}"
            )
        self.local = local
        self._reduce = reduce if reduce is not None else torch_sum()

    def _sum_scalar(self, value: float) -> float:
        return float(np.asarray(self._reduce(np.asarray([value], dtype=np.float64)))[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the whole tensor."""
        return tuple(self.local.shape)

    @property
    def ndim(self) -> int:
        """The number of modes."""
        return len(self.shape)

    @property
    def dtype(self) -> Any:
        """The dtype of the local part."""
        return self.local.dtype

    @property
    def device(self) -> Any:
        """The device of the local part."""
        return getattr(self.local, "device", "cpu")

    def mttkrp(self, factors: Sequence[Array], mode: int) -> Array:
        """The MTTKRP of the whole tensor: the sum of the parts'."""
        return self._reduce(self.local.mttkrp(factors, mode))

    def mttkrp_all(self, factors: Sequence[Array]) -> list[Array]:
        """The MTTKRP of every mode (one reduction each)."""
        return [self._reduce(m) for m in self.local.mttkrp_all(factors)]

    def norm(self) -> float:
        """``‖X‖`` of the whole tensor."""
        return math.sqrt(max(self._sum_scalar(float(self.local.norm()) ** 2), 0.0))

    @property
    def residual_norm(self) -> Callable[[Any], float]:
        """``‖X − cp‖`` of the whole tensor (when the local part offers it)."""
        local = self.local.residual_norm  # AttributeError: the operator lacks it too

        def residual_norm(cp: Any) -> float:
            return math.sqrt(max(self._sum_scalar(float(local(cp)) ** 2), 0.0))

        return residual_norm

    @property
    def inner_cp(self) -> Callable[[Any], float]:
        """``⟨X, cp⟩`` of the whole tensor (when the local part offers it)."""
        local = self.local.inner_cp

        def inner_cp(cp: Any) -> float:
            return self._sum_scalar(float(local(cp)))

        return inner_cp

    @property
    def multi_mode_product(self) -> Callable[[Sequence[Array]], Array]:
        """``X ×_1 M_1 ⋯ ×_N M_N`` of the whole tensor (when the local part offers it)."""
        local = self.local.multi_mode_product

        def multi_mode_product(matrices: Sequence[Array]) -> Array:
            return self._reduce(local(matrices))

        return multi_mode_product

    def to_dense(self) -> Array:
        """The whole dense tensor on every process (for tests and small cases only)."""
        return self._reduce(self.local.to_dense())

    def __repr__(self) -> str:
        return f"SumOverProcesses({self.local!r})"


def shard_over_processes(x: Any, group: Any = None) -> Any:
    """``x`` spread over the processes of ``torch.distributed``: this process's
    ``x.shard(rank, world)`` wrapped in :class:`SumOverProcesses` (summed over the default
    group, or ``group``). A tensor without a ``shard`` method (a dense array) is returned
    as it is: every process then holds and computes on all of it, with the same result.
    Every process must call it, and then the same methods, in the same order.

    Raises
    ------
    CPTensorError
        When ``torch.distributed`` is not initialised, or ``x`` has fewer blocks than
        there are processes.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.ones((2, 3))
    >>> shard_over_processes(x) is x   # dense: nothing to shard, no process group needed
    True
    """
    if not callable(getattr(x, "shard", None)):
        return x
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is optional for the core
        dist = None
    if dist is None or not dist.is_available() or not dist.is_initialized():
        raise CPTensorError(
            "x: sharding over processes needs torch.distributed initialised "
            "(dist.init_process_group, e.g. under torchrun)"
        )
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    n_blocks = math.prod(int(x.shape[m]) for m in x.grid_modes)
    if world > n_blocks:
        raise CPTensorError(
            f"x has {n_blocks} blocks but there are {world} processes; expected at most "
            f"{n_blocks} (one block or more per process)"
        )
    return SumOverProcesses(x.shard(rank, world), reduce=torch_sum(group))
