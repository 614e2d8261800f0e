"""Optimisers for CP-factored adapters: per-factor learning rates and CP preconditioning.

The update of a LoRTA adapter is a product of five factors. Two matrix-case ideas carry
over to it:

- **Per-factor learning rates** (LoRA+, Hayou et al. 2024, PEFT's
  ``create_loraplus_optimizer``): one parameter group per CP mode, each with its own
  multiple of the base learning rate (:func:`factor_param_groups`).
- **CP preconditioning** (the scaled-gradient / Riemannian preconditioner of LoRA, Zhang &
  Pilanci 2024, PEFT's ``create_riemannian_optimizer``, carried to N factors): the gradient
  of factor ``n`` is multiplied by ``(V_n + δI)⁻¹`` with
  ``V_n = s² ⊛_{k≠n} A_kᵀA_k`` the Hadamard product of the other factors' Gram matrices
  (``s = alpha/r``), the matrix of ALS's normal equations. For a squared loss on the
  update tensor this is the Gauss–Newton step of each factor; it makes the step of every
  factor invariant to how the scale is shared between the factors, and costs ``r × r``
  per factor (:class:`CPPreconditioner`).

:func:`create_optimizer` builds either on any ``torch.optim`` optimiser.

Examples
--------
>>> import torch
>>> from transformers import BertConfig, BertModel
>>> from cptensor_adapters import AdapterConfig, attach
>>> model = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
...                num_attention_heads=4, intermediate_size=64)), AdapterConfig(r=4))
>>> opt = create_optimizer(model, lr=1e-3, lr_ratios={"in": 4.0}, precondition=True)
>>> sorted((g["mode"], g["lr"]) for g in opt.param_groups if g["mode"])[:2]
[('head', 0.001), ('in', 0.004)]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from cptensor.errors import CPTensorError

from .layout import AXES
from .model import require_store
from .modules import FactorGroup, FactorStore

__all__ = ["CPPreconditioner", "create_optimizer", "factor_param_groups"]


def _trained_groups(store: FactorStore) -> list[tuple[FactorGroup, float]]:
    """``(group, alpha / r)`` for every CP tensor whose factors train."""
    out = []
    for adapter in store.adapters.values():
        for g in adapter.groups:
            if any(p.requires_grad for p in g.factors.values()):
                out.append((g, adapter.config.scaling))
    return out


def _check_ratios(lr_ratios: Mapping[str, float] | None) -> dict[str, float]:
    ratios = dict(lr_ratios or {})
    for mode, v in ratios.items():
        if mode not in AXES:
            raise CPTensorError(f"lr_ratios: unknown mode {mode!r}; expected modes from {AXES}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise CPTensorError(f"lr_ratios[{mode!r}]: expected a positive number, got {v!r}")
    return ratios


def factor_param_groups(
    model: nn.Module, lr: float, *, lr_ratios: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Parameter groups for a ``torch.optim`` optimiser: one per CP mode of the trainable
    adapter factors, with learning rate ``lr · lr_ratios.get(mode, 1)``, and one with the
    other trainable parameters (``modules_to_save``) at ``lr``.

    Each group carries a ``"mode"`` key (``None`` for the other parameters). Frozen
    parameters are left out.

    Raises
    ------
    ValueError
        a model without adapters, an unknown mode or a ratio that is not
        positive.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...            num_attention_heads=4, intermediate_size=64)), AdapterConfig(r=2))
    >>> [(g["mode"], g["lr"], len(g["params"])) for g in factor_param_groups(m, 0.1,
    ...  lr_ratios={"in": 10})]
    [('out', 0.1, 1), ('in', 1.0, 1), ('head', 0.1, 1), ('layer', 0.1, 1), ('matrix', 0.1, 1)]
    """
    ratios = _check_ratios(lr_ratios)
    store = require_store(model)
    by_mode: dict[str, list[nn.Parameter]] = {}
    factor_ids: set[int] = set()
    for g, _ in _trained_groups(store):
        for mode, p in g.factors.items():
            factor_ids.add(id(p))
            if p.requires_grad:
                by_mode.setdefault(mode, []).append(p)
    groups = [
        {"params": ps, "lr": lr * ratios.get(mode, 1.0), "mode": mode}
        for mode in AXES
        if (ps := by_mode.get(mode))
    ]
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in factor_ids]
    if others:
        groups.append({"params": others, "lr": lr, "mode": None})
    return groups


class CPPreconditioner:
    """Multiplies the gradient of every CP factor by ``(V_n + δI)⁻¹`` in place.

    ``V_n = s² ⊛_{k≠n} A_kᵀA_k`` (``s = alpha / r``) is the Gram matrix of the Khatri–Rao
    product of the other factors, so ``G_n (V_n + δI)⁻¹`` is the regularised least-squares
    step of factor ``n`` (ALS's normal equations, applied to the gradient). The ridge is
    relative: ``δ = reg · max_n tr(V_n) / r`` over the CP tensor's factors, so that the
    preconditioner does not depend on the units of the factors; a zero-initialised factor
    (``V_n = 0`` for every other ``n``) makes the others' steps ``1/δ`` times their
    gradients, which are zero at that point anyway. Computed in float64 from detached
    factors; the result is cast back to the gradient's dtype.

    Parameters
    ----------
    model : torch.nn.Module
        a model with adapters (the factors that train are preconditioned).
    reg : float
        the relative ridge (``> 0``).

    Raises
    ------
    ValueError
        a model without adapters or ``reg`` not positive.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...            num_attention_heads=4, intermediate_size=64)), AdapterConfig(r=2,
    ...            init="random"))
    >>> m(torch.ones(1, 3, dtype=torch.long)).last_hidden_state.sum().backward()
    >>> CPPreconditioner(m).step()
    """

    def __init__(self, model: nn.Module, reg: float = 1e-3) -> None:
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
            raise CPTensorError(f"reg: expected a positive number, got {reg!r}")
        self.store = require_store(model)
        self.reg = float(reg)

    @torch.no_grad()
    def step(self) -> None:
        """Precondition the current ``.grad`` of every trained factor."""
        for g, scaling in _trained_groups(self.store):
            factors = g.factor_list()
            grams = [
                (f.detach().to(torch.float64).T @ f.detach().to(torch.float64)) for f in factors
            ]
            vs = []
            for n in range(len(factors)):
                v = torch.full_like(grams[0], scaling * scaling)
                for k, gk in enumerate(grams):
                    if k != n:
                        v = v * gk
                vs.append(v)
            r = grams[0].shape[0]
            tau = max(float(torch.diagonal(v).sum()) for v in vs) / r
            if not tau > 0:
                continue
            eye = torch.eye(r, dtype=torch.float64, device=grams[0].device)
            for f, v in zip(factors, vs):
                if f.grad is None:
                    continue
                pre = v + (self.reg * tau) * eye
                # G (V + δI)⁻¹ = ((V + δI)⁻¹ Gᵀ)ᵀ, V symmetric positive definite
                step = torch.linalg.solve(pre, f.grad.to(torch.float64).T).T
                f.grad.copy_(step.to(f.grad.dtype))


def create_optimizer(
    model: nn.Module,
    lr: float,
    *,
    optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
    lr_ratios: Mapping[str, float] | None = None,
    precondition: bool = False,
    reg: float = 1e-3,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """An optimiser of ``model``'s trainable parameters: ``optimizer_cls`` over
    :func:`factor_param_groups` (per-mode learning rates ``lr · lr_ratios[mode]``), whose
    ``step`` first applies :class:`CPPreconditioner` when ``precondition`` is true.

    Parameters
    ----------
    model : torch.nn.Module
        a model with adapters attached.
    lr : float
        the base learning rate (of ``modules_to_save`` and of modes without a ratio).
    optimizer_cls : type
        a ``torch.optim.Optimizer`` subclass whose ``step`` takes no
        closure (AdamW, SGD, ...).
    lr_ratios : mapping of str to float, optional
        learning-rate multiple per CP mode (``"out"``, ``"in"``, ``"head"``,
        ``"layer"``, ``"matrix"``), e.g. LoRA+'s ``{"in": 16}`` for the zero factor.
    precondition : bool
        precondition the factors' gradients (:class:`CPPreconditioner`).
    reg : float
        the preconditioner's relative ridge.
    **kwargs : Any
        passed to ``optimizer_cls`` (``weight_decay``, ``betas``, ...).

    Raises
    ------
    ValueError
        a model without adapters, bad ratios or ``reg``, or an optimiser that
        needs a closure (LBFGS).

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...            num_attention_heads=4, intermediate_size=64)), AdapterConfig(r=2))
    >>> type(create_optimizer(m, 1e-3, precondition=True)).__name__
    'CPPreconditionedAdamW'
    """
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)):
        raise CPTensorError(
            f"optimizer_cls: expected a torch.optim.Optimizer subclass, got {optimizer_cls!r}"
        )
    closure = inspect.signature(optimizer_cls.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise CPTensorError(
            f"optimizer_cls: {optimizer_cls.__name__}.step needs a closure, which would "
            "recompute the gradients after they were preconditioned; use AdamW, SGD, ..."
        )
    groups = factor_param_groups(model, lr, lr_ratios=lr_ratios)
    if not precondition:
        return optimizer_cls(groups, lr=lr, **kwargs)
    pre = CPPreconditioner(model, reg)

    def step(self: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        if closure is not None:
            raise CPTensorError("closure: the preconditioned optimiser takes none")
        pre.step()
        return optimizer_cls.step(self, None)

    cls = type(f"CPPreconditioned{optimizer_cls.__name__}", (optimizer_cls,), {"step": step})
    return cls(groups, lr=lr, **kwargs)
