"""Gradient-aligned initialisation: the tensor analogue of LoRA-GA.

At the start of fine-tuning the gradient of the loss with respect to every targeted weight
is itself a grid of matrices, i.e. a tensor of the adapter's layout (``d × d_h × H × L × M``
under ``"lorta"``). :func:`gradient_init` measures it on a few batches, fits a rank-``r``
CP model to its negation with :func:`cptensor.fit_als` (through a
:class:`cptensor.BlockTensor` over the per-matrix gradients, so the tensor is never
copied into one array), and restarts the adapter's non-zero factors from the CP factors
(columns rescaled to the RMS the config's ``init`` gives them). The factor that
``init`` keeps at zero stays zero, so the model's output is unchanged, and the first
steps move ``ΔW`` within the best rank-``r`` CP approximation of the steepest-descent
direction instead of a random one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from cptensor.errors import CPTensorError, CPTensorTypeError

from .inits import factor_bound
from .layout import group_tensor
from .modules import AdapterFactors, CPAdapterLayer

__all__ = ["gradient_init"]


def _default_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    out = model(**batch)
    loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", None)
    if loss is None:
        raise CPTensorError(
            "batches: the model returned no loss; give batches with labels or a loss function"
        )
    return loss


def _target_gradients(
    model: nn.Module,
    adapter: AdapterFactors,
    batches: Iterable[Mapping[str, Any]],
    loss: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Mean gradient of ``loss`` with respect to each target's weight (``Linear``
    orientation); nothing else's ``.grad`` is touched."""
    layers: dict[str, CPAdapterLayer] = {}
    for path in adapter.grid.modules:
        layer = model.get_submodule(path)
        if not isinstance(layer, CPAdapterLayer):  # pragma: no cover - attach wraps every target
            raise CPTensorTypeError(
                f"{path}: expected an adapter layer, got {type(layer).__name__}"
            )
        layers[path] = layer
    weights = [layer.base_layer.weight for layer in layers.values()]
    flags = [w.requires_grad for w in weights]
    sums: list[torch.Tensor] | None = None
    n = 0
    try:
        for w in weights:
            w.requires_grad_(True)
        for batch in batches:
            value = loss(model, batch)
            if not torch.isfinite(value):
                raise CPTensorError(f"batches: the loss of batch {n} is {float(value.detach())}")
            grads = torch.autograd.grad(value, weights, allow_unused=True)
            grads = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, grads)]
            sums = grads if sums is None else [s + g for s, g in zip(sums, grads)]
            n += 1
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
    if sums is None:
        raise CPTensorError("batches: expected at least one batch, got none")
    by_module = {path: g / n for path, g in zip(layers, sums)}
    out = {}
    for t in adapter.grid.targets:
        g = by_module[t.module]
        if layers[t.module].storage == "conv1d":
            g = g.t()
        out[t.name] = g[t.out_offset : t.out_offset + t.out_features]
    return out


@torch.no_grad()
def _set_factors(adapter: AdapterFactors, group: int, cp: Any) -> None:
    g = adapter.groups[group]
    r = adapter.config.r
    for mode, f in zip(g.plan.modes, cp.factors):
        p = g.factors[mode]
        bound = factor_bound(adapter.config.init, mode, p.shape[0], r)
        if bound is None:
            p.zero_()
            continue
        cols = f.to(torch.float64)
        norms = torch.linalg.vector_norm(cols, dim=0)
        norms = torch.where(norms > 0, norms, torch.ones_like(norms))
        rms = bound / 3**0.5  # the RMS of U(-bound, bound)
        p.copy_((cols / norms * (rms * p.shape[0] ** 0.5)).to(p.dtype))


def gradient_init(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    name: str = "default",
    loss: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor] | None = None,
    max_iter: int = 100,
    seed: int | None = None,
) -> list[Any]:
    """Restart adapter ``name``'s factors from the CP of the negated loss gradient.

    The mean gradient of the loss over ``batches`` with respect to every target weight is
    laid out as the adapter's CP tensors (the same orientation as the forward pass), each
    is fitted at the adapter's rank with :func:`cptensor.fit_als`, and every factor that
    ``config.init`` draws at random is replaced by the fitted factor, its columns rescaled to
    the RMS of ``config.init``'s distribution for that mode. The factor ``config.init``
    keeps at zero stays zero, so ``ΔW = 0`` and the model's outputs do not change.

    The model is used in its current mode (``train()``: dropout included); base weights
    get ``requires_grad`` only while the gradient is taken, and no parameter's ``.grad``
    is changed.

    Parameters
    ----------
    model : torch.nn.Module
        a model with adapter ``name`` attached (not merged).
    batches : iterable of mapping of str to Any
        keyword arguments of the forward pass, one mapping per batch (with
        ``labels`` for a Hugging Face model, whose output then carries ``loss``).
    name : str
        the adapter.
    loss : callable, optional
        ``loss(model, batch)`` → scalar tensor; default ``model(**batch).loss``.
    max_iter : int
        ALS sweeps of each fit.
    seed : int, optional
        seed of the fit's random start (default: the config's seed).

    Returns
    -------
    list of cptensor.CPFit
        The :class:`cptensor.CPFit` of each CP group (how much of the gradient a rank-``r``
        CP captures: ``fit``).

    Raises
    ------
    ValueError
        no adapter ``name``, an adapter under ``init="random"`` (no zero
        factor), a merged adapter, no batch, or a non-finite loss.

    Examples
    --------
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = attach(BertForSequenceClassification(BertConfig(hidden_size=32,
    ...     num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)),
    ...     AdapterConfig(r=2, init="scaled"))
    >>> batch = {"input_ids": torch.randint(0, 100, (4, 6)),
    ...          "labels": torch.tensor([0, 1, 1, 0])}
    >>> fits = gradient_init(model.eval(), [batch])
    >>> len(fits), 0.0 < fits[0].fit <= 1.0
    (1, True)
    """
    from cptensor import fit_als

    from .model import require_adapter

    adapter = require_adapter(model, name)
    if factor_bound(adapter.config.init, "in", 1, 1) is not None and (
        factor_bound(adapter.config.init, "out", 1, 1) is not None
    ):
        raise CPTensorError(
            f"name: adapter {name!r} uses init={adapter.config.init!r}, which has no zero "
            "factor; gradient_init keeps the model unchanged only with a zero factor"
        )
    merged = [
        p
        for p, layer in model.named_modules()
        if isinstance(layer, CPAdapterLayer) and name in layer.merged
    ]
    if merged:
        raise CPTensorError(f"name: adapter {name!r} is merged into {merged[0]}; unmerge it first")
    grads = _target_gradients(model, adapter, batches, loss or _default_loss)
    fits = []
    for plan in adapter.plans:
        x = group_tensor(plan, lambda m: -grads[m.target].to(adapter.dtype))
        fit = fit_als(
            x,
            adapter.config.r,
            init="random",
            seed=adapter.config.seed if seed is None else seed,
            max_iter=max_iter,
        )
        _set_factors(adapter, plan.index, fit.cp)
        fits.append(fit)
    return fits
