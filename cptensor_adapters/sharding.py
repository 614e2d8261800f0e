"""Adapters on models sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Under FSDP2 each parameter is a ``DTensor`` holding one shard per rank between forward
passes. The adapter's factor store is an ordinary submodule of the model, so it is
sharded by the unit that wraps it (the root, when each decoder layer is its own unit):
its factors are gathered in the root's forward pass, like the embeddings. What reads the
whole adapter outside a forward pass — :func:`~cptensor_adapters.save_adapter`,
:func:`~cptensor_adapters.save_as_peft_lora`, :func:`~cptensor_adapters.as_cp`,
:func:`~cptensor_adapters.delta_weights`, :func:`~cptensor_adapters.merge` — does it
inside :func:`gathered`, which unshards the units that hold the adapter's parameters and
reshards them afterwards; what writes into sharded parameters (loading, merging into a
sharded base weight) writes each rank's own shard (:func:`copy_into`, :func:`add_into`).
Files are written by rank 0 alone, and on a sharded model every rank waits for them
(:func:`on_writer`); a model that is not sharded (DDP) is saved by rank 0 without any
collective, so a save called on the main process only does not hang.

All of these are collective under FSDP: every rank must call them, in the same order, as
with any FSDP operation. Without ``torch.distributed`` (or before it is initialised) they
cost nothing and do nothing special.

The classic wrapper ``torch.distributed.fsdp.FullyShardedDataParallel`` (FSDP1) is not
supported: it flattens the parameters of each unit into one ``FlatParameter`` and leaves
the adapter's factors as views of this rank's slice of it, so a read outside a forward
pass would see a part of a factor or nothing. :func:`gathered` and :func:`copy_into` —
through which every adapter function that reads or writes the whole adapter goes — raise
a :class:`~cptensor.errors.CPTensorError` naming ``fully_shard`` instead
(:func:`reject_fsdp1`). (FSDP1 also needs an accelerator device: it cannot run on CPUs
with gloo, where this was tested.)

Examples
--------
>>> import torch
>>> from torch import nn
>>> with gathered(nn.Linear(2, 2)):   # no sharded unit: nothing to gather
...     pass
>>> w = torch.zeros(2, 2)
>>> add_into(w, torch.ones(2, 2), -1)
>>> w
tensor([[-1., -1.],
        [-1., -1.]])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from cptensor.errors import CPTensorError

__all__ = [
    "add_into",
    "copy_into",
    "distributed",
    "full",
    "gathered",
    "is_sharded",
    "on_writer",
    "reject_fsdp1",
    "sharded_model",
    "sharded_units",
]

T = TypeVar("T")


def distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process.

    Examples
    --------
    >>> distributed()      # a plain process
    False
    """
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return DTensor


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` (a parameter sharded by FSDP2).

    Examples
    --------
    >>> import torch
    >>> is_sharded(torch.zeros(3))
    False
    """
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or the whole tensor of a ``DTensor`` (collective: every rank calls it).

    Examples
    --------
    >>> import torch
    >>> t = torch.ones(2)
    >>> full(t) is t
    True
    """
    return t.full_tensor() if is_sharded(t) else t


#: What :func:`reject_fsdp1` says after naming the argument.
_FSDP1_MESSAGE = (
    "is managed by the classic torch.distributed.fsdp.FullyShardedDataParallel wrapper "
    "(FSDP1), whose flattened parameters the adapter functions cannot read or write; wrap "
    "the model with torch.distributed.fsdp.fully_shard (FSDP2) instead (with Accelerate: "
    "fsdp_version: 2); see docs/tutorials/fsdp.md"
)

#: The mark FSDP1 sets on the parameters it flattens (torch's ``FSDP_FLATTENED``).
_FSDP1_FLATTENED = "_fsdp_flattened"


def _fsdp1_wrapper_type() -> type | None:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return FullyShardedDataParallel


def reject_fsdp1(model: nn.Module | None = None, params: Iterable[torch.Tensor] = ()) -> None:
    """Raise :class:`~cptensor.errors.CPTensorError` if ``model`` (or a module in it) is
    wrapped with the classic ``FullyShardedDataParallel`` (FSDP1), or a tensor of
    ``params`` was flattened by it; do nothing otherwise.

    Examples
    --------
    >>> from torch import nn
    >>> reject_fsdp1(nn.Linear(2, 2))      # a plain model passes
    >>> w = nn.Parameter(torch.zeros(2))
    >>> w._fsdp_flattened = True           # what FSDP1 marks its flattened parameters with
    >>> reject_fsdp1(params=[w])
    Traceback (most recent call last):
    ...
    cptensor.errors.CPTensorError: params: is managed by the classic ...
    """
    if any(getattr(p, _FSDP1_FLATTENED, False) for p in params):
        raise CPTensorError(f"params: {_FSDP1_MESSAGE}")
    if model is None:
        return
    wrapper = _fsdp1_wrapper_type()
    if wrapper is not None and any(isinstance(m, wrapper) for m in model.modules()):
        raise CPTensorError(f"model: {_FSDP1_MESSAGE}")
    if any(getattr(p, _FSDP1_FLATTENED, False) for p in model.parameters()):
        raise CPTensorError(f"model: {_FSDP1_MESSAGE}")


def _fsdp_module_type() -> type | None:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch built without distributed
        return None
    return FSDPModule


def sharded_units(model: nn.Module, params: Iterable[torch.Tensor]) -> list[nn.Module]:
    """The FSDP2 units that manage ``params``: for each, the innermost module wrapped by
    ``fully_shard`` among the ancestors of the module that owns it (in ``model``'s order).

    Examples
    --------
    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(2, 2))
    >>> sharded_units(m, m.parameters())    # nothing was passed to fully_shard
    []
    """
    fsdp = _fsdp_module_type()
    if fsdp is None:
        return []
    wanted = {id(p) for p in params}
    units: dict[int, nn.Module] = {}

    def walk(module: nn.Module, unit: nn.Module | None) -> None:
        if isinstance(module, fsdp):
            unit = module
        for p in module.parameters(recurse=False):
            if id(p) in wanted and unit is not None:
                units.setdefault(id(unit), unit)
        for child in module.children():
            walk(child, unit)

    walk(model, None)
    return list(units.values())


@contextmanager
def gathered(model: nn.Module, params: Iterable[torch.Tensor] | None = None) -> Iterator[None]:
    """Within the block, ``params`` (default: every parameter of ``model``) are whole
    tensors on every rank: the FSDP2 units that hold them are unsharded, and resharded on
    exit. Collective under FSDP; a no-op for a model that is not sharded.

    Reads only: a write into an unsharded parameter is lost when it is resharded (use
    :func:`copy_into` or :func:`add_into` on the sharded parameter instead).

    Raises
    ------
    CPTensorError
        ``model`` is wrapped with the classic ``FullyShardedDataParallel`` (FSDP1); see
        :func:`reject_fsdp1`.

    Examples
    --------
    >>> from torch import nn
    >>> m = nn.Linear(2, 2)
    >>> with gathered(m):
    ...     m.weight.shape
    torch.Size([2, 2])
    """
    reject_fsdp1(model)
    units = sharded_units(model, model.parameters() if params is None else params)
    for unit in units:
        unit.unshard()  # type: ignore[operator]
    try:
        yield
    finally:
        for unit in reversed(units):
            unit.reshard()  # type: ignore[operator]


def _local_part(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The part of the whole tensor ``value`` that this rank's shard of ``param`` holds."""
    from torch.distributed.tensor import distribute_tensor

    part = distribute_tensor(
        value.to(device=param.device, dtype=param.dtype),
        param.device_mesh,  # type: ignore[attr-defined]
        param.placements,  # type: ignore[attr-defined]
        src_data_rank=None,  # every rank holds the same whole tensor: no communication
    )
    return part.to_local()


@torch.no_grad()
def copy_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """``param.copy_(value)`` for a whole ``value``, also when ``param`` is sharded (each
    rank copies its own shard; ``value`` must be the same on every rank).

    Raises
    ------
    CPTensorError
        ``param`` was flattened by the classic ``FullyShardedDataParallel`` (FSDP1).

    Examples
    --------
    >>> import torch
    >>> p = torch.zeros(2)
    >>> copy_into(p, torch.tensor([1.0, 2.0])); p
    tensor([1., 2.])
    """
    reject_fsdp1(params=[param])
    if is_sharded(param):
        param.to_local().copy_(_local_part(param, value))  # type: ignore[attr-defined]
    else:
        param.copy_(value.to(device=param.device, dtype=param.dtype))


@torch.no_grad()
def add_into(param: torch.Tensor, value: torch.Tensor, sign: int) -> None:
    """``param += sign · value`` for a whole ``value``, also when ``param`` is sharded.

    Examples
    --------
    >>> import torch
    >>> p = torch.ones(2)
    >>> add_into(p, torch.ones(2), -1); p
    tensor([0., 0.])
    """
    reject_fsdp1(params=[param])
    if is_sharded(param):
        param.to_local().add_(_local_part(param, value), alpha=sign)  # type: ignore[attr-defined]
    else:
        param.add_(value.to(param.dtype), alpha=sign)


def on_writer(write: Callable[[], T], *, collective: bool = True) -> T | None:
    """Run ``write`` on rank 0 only (every process when not distributed); rank 0 gets its
    result, the others ``None``.

    With ``collective=True`` (a sharded model, whose save gathers on every rank anyway)
    every rank waits until rank 0 is done, so a read right after the call sees the file on
    every rank; an error on rank 0 is raised there after the others are released. With
    ``collective=False`` (a model that is not sharded, e.g. under DDP) nothing is
    collective: rank 0 writes and the others return at once, so the usual
    ``if accelerator.is_main_process: save_adapter(...)`` does not wait for ranks that
    never call it, and a call on every rank writes once (wait with ``dist.barrier()`` or
    ``accelerator.wait_for_everyone()`` before other ranks read the files).

    Examples
    --------
    >>> on_writer(lambda: "written")    # a plain process writes
    'written'
    """
    if not distributed():
        return write()
    import torch.distributed as dist

    if not collective:
        return write() if dist.get_rank() == 0 else None
    result: T | None = None
    failed: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            result = write()
        except BaseException as exc:  # released below, then raised
            failed = exc
    dist.barrier()
    if failed is not None:
        raise failed
    return result


def sharded_model(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is sharded by FSDP2 (then saving is collective).

    Examples
    --------
    >>> from torch import nn
    >>> sharded_model(nn.Linear(2, 2))
    False
    """
    return any(is_sharded(p) for p in model.parameters())
