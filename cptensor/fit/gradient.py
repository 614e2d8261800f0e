"""All-at-once CP fitting by gradient-based optimisation (Tensor Toolbox ``cp_opt`` /
``cp_wopt`` style) through torch autograd, on the CPU or a GPU."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import init as _init
from .._backend import Array, is_array, is_numpy, is_torch, namespace, shape_tuple
from ..algebra import arrange, fix_signs
from ..cp import CPTensor
from ..errors import CPTensorError, CPTensorTypeError
from ..keywords import tensorly_keywords
from ..operator import is_operator
from ..reconstruct import reconstruct
from ._common import (
    check_callback,
    check_int,
    check_nonneg_float,
    check_tensor,
    coerce_start,
    magnitude_scale,
    prepare_mask,
    progress_bar,
    rescaled,
    resolve_start,
)
from .result import CPFit, FitState

__all__ = ["fit_gradient"]


class _Stop(Exception):
    """Raised inside the L-BFGS closure when the callback asks to stop."""


_INITS = ("svd", "random", "orthogonal")
_OPTIMIZERS = ("lbfgs", "adam")
_LOSSES = ("squared",)


def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is installed in the dev environment
        raise ImportError(
            "fit_gradient needs PyTorch (pip install torch, or the cptensor[torch] extra)"
        ) from None
    return torch


def _to_torch(a: Array, torch: Any, dev: Any) -> Any:
    t = torch.from_numpy(np.ascontiguousarray(a)) if is_numpy(a) else a.detach()
    return t.to(dev) if dev is not None else t


@tensorly_keywords("fit_gradient")
def fit_gradient(
    x: Array,
    rank: int | CPTensor,
    *,
    init: str | CPTensor = "svd",
    seed: int | np.random.Generator | None = None,
    mask: Array | None = None,
    weights: Array | None = None,
    loss: str = "squared",
    max_iter: int = 500,
    optimizer: str = "lbfgs",
    lr: float | None = None,
    tol: float = 1e-12,
    device: Any = None,
    callback: Callable[[FitState], Any] | None = None,
    progress: bool = False,
) -> CPFit:
    """Fit a CP model by minimising the (weighted, masked) squared error all at once.

    The loss ``½ Σ w·(X − M)² / Σ w·X²`` (``w`` = ``weights`` times ``mask``; ones by default)
    is minimised over all factors jointly with a torch optimizer, gradients by autograd.
    NumPy input is converted internally to torch (same dtype) and the result converted back
    to NumPy; torch input stays on its device unless ``device`` is given. Needs PyTorch.

    Parameters
    ----------
    x:
        Dense NumPy array or torch tensor (float32/float64, at least 2 modes).
    rank:
        Number of components, or a :class:`~cptensor.CPTensor` to start from.
    init:
        ``"svd"``, ``"random"``, ``"orthogonal"`` (see :mod:`cptensor.init`) or a CPTensor.
    seed:
        Seed for the initialisation (same seed, same result).
    mask:
        Boolean array like ``x``, True = observed (``cp_wopt``). When None, NaNs in ``x``
        are treated as missing with a warning.
    weights:
        Nonnegative per-entry weights of ``x``'s shape and backend.
    loss:
        ``"squared"`` (the only loss implemented).
    max_iter:
        Maximum number of optimizer iterations.
    optimizer:
        ``"lbfgs"`` (L-BFGS with a strong-Wolfe line search, default) or ``"adam"``.
    lr:
        Learning rate (default 1 for L-BFGS, 0.01 for Adam).
    tol:
        Convergence tolerance on the normalized loss (which is ``rel_error²/2``): L-BFGS
        stops when the loss or the step changes by less than ``tol`` (torch's
        ``tolerance_change``), Adam when the relative change of the loss is at most ``tol``.
    device:
        Torch device to compute on (default: ``x``'s device, CPU for NumPy input). The
        result is returned on ``x``'s own backend and device.
    callback:
        Called after each iteration with a :class:`~cptensor.fit.result.FitState`;
        returning True stops.
    progress:
        Show a ``tqdm`` progress bar.

    Returns
    -------
    CPFit
        With ``rel_error`` computed directly as ``sqrt(Σ w·(X − M)² / Σ w·X²)``
        (accumulated in float64), which is ``‖X − M‖/‖X‖`` without weights or mask.
        For L-BFGS, ``history`` holds the fit at every function evaluation (line-search
        trials included) and ``n_iter`` the number of L-BFGS iterations.

    Examples
    --------
    >>> import numpy as np
    >>> import cptensor as ct
    >>> from cptensor.fit import fit_gradient
    >>> x = ct.reconstruct(ct.init.random((5, 6, 7), 2, seed=0))
    >>> result = fit_gradient(x, 2, seed=0)
    >>> type(result.cp.factors[0]).__name__, result.rel_error < 1e-4
    ('ndarray', True)
    """
    t0 = time.perf_counter()
    if is_operator(x):
        raise CPTensorTypeError(
            f"fit_gradient needs a dense array, got the operator {type(x).__name__}; "
            "use fit_als for operators or pass x.to_dense()"
        )
    shape, _ = check_tensor(x)
    rank, init = coerce_start(rank, init)
    start, rank = resolve_start(x, shape, rank, init, _INITS)
    if loss not in _LOSSES:
        raise CPTensorError(f"loss must be one of {_LOSSES}, got {loss!r}")
    if optimizer not in _OPTIMIZERS:
        raise CPTensorError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
    max_iter = check_int(max_iter, "max_iter", 1)
    tol = check_nonneg_float(tol, "tol")
    if lr is None:
        lr = 1.0 if optimizer == "lbfgs" else 0.01
    lr = check_nonneg_float(lr, "lr")
    if lr == 0:
        raise CPTensorError("lr must be > 0")
    callback = check_callback(callback)
    torch = _torch()

    masked = prepare_mask(x, mask)
    if weights is not None:
        if not is_array(weights):
            raise CPTensorTypeError(
                f"weights must be an array like x, got {type(weights).__name__}"
            )
        namespace(x, weights, names=["x", "weights"])
        if shape_tuple(weights) != shape:
            raise CPTensorError(f"weights has shape {shape_tuple(weights)}, expected {shape}")
        wxp = namespace(weights)
        if not bool(wxp.all(wxp.isfinite(weights))) or bool(wxp.any(weights < 0)):
            raise CPTensorError("weights must be finite and >= 0")

    xp0 = namespace(x)
    s = magnitude_scale(xp0, x if masked is None else xp0.where(masked, x, xp0.zeros_like(x)))
    if s != 1.0:  # tiny or huge data: fit an exact power-of-two rescaling of it
        return rescaled(
            fit_gradient,
            x,
            s,
            rank,
            init,
            callback,
            seed=seed,
            mask=masked,
            weights=weights,
            loss=loss,
            max_iter=max_iter,
            optimizer=optimizer,
            lr=lr,
            tol=tol,
            device=device,
            progress=progress,
        )
    out_device = x.device if is_torch(x) else None
    dev = device if device is not None else (x.device if is_torch(x) else "cpu")
    xt = _to_torch(x, torch, dev)
    dtype = xt.dtype
    w = None
    if masked is not None:
        w = _to_torch(masked, torch, dev).to(dtype)
    if weights is not None:
        wt = _to_torch(weights, torch, dev).to(dtype)
        w = wt if w is None else w * wt
    if w is not None:
        xt = torch.where(w > 0, xt, torch.zeros((), dtype=dtype, device=xt.device))
    info: dict[str, Any] = {"optimizer": optimizer, "device": str(xt.device)}

    # -- start --------------------------------------------------------------------------
    if start is not None:
        info["init"] = "given CPTensor"
        facs = [_to_torch(f, torch, dev) for f in start.factors]
        lam = _to_torch(start.weights, torch, dev)
    else:
        info["init"] = init
        if init == "svd":
            src = xt
            if w is not None:
                obs = w > 0
                mean = xt[obs].mean() if bool(obs.any()) else torch.zeros((), dtype=dtype)
                src = torch.where(obs, xt, mean)
            cp0 = _init.svd(src, rank, seed=seed)
        else:
            maker = _init.random if init == "random" else _init.orthogonal
            cp0 = maker(shape, rank, like=xt, seed=seed)
        facs, lam = list(cp0.factors), cp0.weights
    # Balance the weights over the factors (scale |λ|^(1/N) each, sign into the first).
    ndim = len(shape)
    scale = lam.abs() ** (1.0 / ndim)
    params = []
    for n, f in enumerate(facs):
        p = f * scale
        if n == 0:
            p = p * torch.where(lam < 0, -1.0, 1.0).to(dtype)
        params.append(p.detach().clone().requires_grad_(True))

    xw = xt if w is None else xt * w
    denom = (
        float((xw.double() * xt.double()).sum())
        if w is not None
        else float((xt.double() ** 2).sum())
    )
    if denom == 0.0:
        zero = CPTensor(torch.zeros(rank, dtype=dtype, device=dev), [p.detach() for p in params])
        return _finish(
            zero,
            0.0,
            (),
            0,
            True,
            "x is zero (on the weighted entries): the zero CP tensor fits it exactly",
            t0,
            {**info},
            out_device,
            x,
        )

    def model() -> Any:
        kr = params[1]
        for p in params[2:]:
            kr = (kr[:, None, :] * p[None, :, :]).reshape(-1, kr.shape[1])
        return (params[0] @ kr.T).reshape(shape)

    if start is None:  # scale the start to its best multiple of itself (scale-free inits)
        with torch.no_grad():
            m0 = model()
            den0 = float(((m0 * m0) if w is None else (w * m0 * m0)).double().sum())
            if den0 > 0:
                alpha = float((xw * m0).double().sum()) / den0
                if alpha != 0.0:
                    s = abs(alpha) ** (1.0 / ndim)
                    for n, p in enumerate(params):
                        p.mul_(s * (-1.0 if (n == 0 and alpha < 0) else 1.0))

    def objective() -> Any:
        diff = xt - model()
        if w is not None:
            return 0.5 * (w * diff * diff).sum() / denom
        return 0.5 * (diff * diff).sum() / denom

    history: list[float] = []
    state = {"converged": False, "reason": f"max_iter={max_iter} reached without convergence"}
    bar = progress_bar(progress, max_iter, optimizer)

    def record(value: float, it: int) -> None:
        """Log one iterate; raises _Stop when the callback asks to stop."""
        rel = math.sqrt(max(2.0 * value, 0.0))
        history.append(1.0 - rel)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(fit=f"{1.0 - rel:.8f}", refresh=False)
        if callback is not None:
            # a snapshot on x's own backend and device: the callback may keep it
            if is_numpy(x):
                snap = [p.detach().cpu().numpy().copy() for p in params]
            else:
                snap = [p.detach().clone().to(out_device or p.device) for p in params]
            cp_now = CPTensor(None, snap)
            if callback(FitState(it, 1.0 - rel, rel, False, cp_now)) is True:
                state["reason"] = f"stopped by callback at evaluation {it}"
                raise _Stop

    it = 0
    try:
        if optimizer == "lbfgs":
            opt = torch.optim.LBFGS(
                params,
                lr=lr,
                max_iter=max_iter,
                max_eval=max(2 * max_iter, max_iter + 25),
                history_size=20,
                line_search_fn="strong_wolfe",
                tolerance_grad=0.0,
                tolerance_change=tol,
            )

            def closure() -> Any:
                nonlocal it
                opt.zero_grad()
                value = objective()
                value.backward()
                it += 1
                record(float(value.detach()), it)
                return value

            try:
                opt.step(closure)
            except _Stop:
                pass
            n_done = int(opt.state[params[0]].get("n_iter", 0))
            if not state["reason"].startswith("stopped") and n_done < max_iter:
                state["converged"] = True
                state["reason"] = (
                    f"converged: L-BFGS change of the loss or step below tol={tol:g} after "
                    f"{n_done} iterations ({it} evaluations)"
                )
            it = n_done
        else:
            opt = torch.optim.Adam(params, lr=lr)
            prev = None
            for it in range(1, max_iter + 1):
                opt.zero_grad()
                value = objective()
                value.backward()
                opt.step()
                v = float(value.detach())
                if not math.isfinite(v):
                    state["reason"] = f"loss became non-finite at iteration {it}; lower lr"
                    break
                try:
                    record(v, it)
                except _Stop:
                    break
                if prev is not None and abs(prev - v) <= tol * max(prev, 1e-300):
                    state["converged"] = True
                    state["reason"] = (
                        f"converged: relative change of the loss below tol={tol:g} after "
                        f"{it} iterations"
                    )
                    break
                prev = v
    finally:
        if bar is not None:
            bar.close()
    converged, stop_reason = bool(state["converged"]), str(state["reason"])

    factors = [p.detach() for p in params]
    if not all(bool(torch.isfinite(f).all()) for f in factors):
        factors = [torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0) for f in factors]
        stop_reason += "; non-finite factor entries were set to 0"
    cp = CPTensor(None, factors)
    with torch.no_grad():
        m = reconstruct(cp)
        diff = (xt - m).double()
        num = float((diff * diff * (w.double() if w is not None else 1.0)).sum())
    rel = math.sqrt(num / denom)
    info["rel_error_method"] = "direct residual (float64 accumulation)" + (
        " over weighted/observed entries" if w is not None else ""
    )
    return _finish(cp, rel, tuple(history), it, converged, stop_reason, t0, info, out_device, x)


def _finish(
    cp: CPTensor,
    rel: float,
    history: tuple[float, ...],
    n_iter: int,
    converged: bool,
    reason: str,
    t0: float,
    info: dict[str, Any],
    out_device: Any,
    x: Array,
) -> CPFit:
    cp = fix_signs(arrange(cp))
    if is_numpy(x):
        cp = CPTensor(
            cp.weights.detach().cpu().numpy(), [f.detach().cpu().numpy() for f in cp.factors]
        )
    elif out_device is not None and cp.factors[0].device != out_device:
        cp = CPTensor(cp.weights.to(out_device), [f.to(out_device) for f in cp.factors])
    return CPFit(
        cp=cp,
        fit=1.0 - rel,
        rel_error=rel,
        history=history,
        n_iter=n_iter,
        converged=converged,
        stop_reason=reason,
        seconds=time.perf_counter() - t0,
        info=info,
        method="gradient",
    )
