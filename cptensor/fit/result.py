"""The result of a CP fit (:class:`CPFit`) and the state handed to callbacks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..cp import CPTensor


@dataclass(frozen=True, repr=False)
class CPFit:
    """The outcome of :func:`~cptensor.fit.fit_als` or :func:`~cptensor.fit.fit_gradient`.

    Attributes
    ----------
    cp:
        The fitted CP tensor, normalized (unit factor columns, norms in the weights),
        arranged (weights in decreasing order) and with signs fixed
        (:func:`cptensor.fix_signs`); same backend, device and dtype as the input.
    fit:
        ``1 - rel_error``.
    rel_error:
        The relative error ``‖X − M‖ / ‖X‖``, computed directly from the residual at the
        end (not from the cancelling formula ``‖X‖² + ‖M‖² − 2⟨X, M⟩``); over the observed
        entries only when a mask is used. ``info["rel_error_method"]`` says how it was
        obtained.
    history:
        The fit after each iteration (Python floats).
    n_iter:
        The number of iterations (ALS sweeps or optimizer iterations) run.
    converged:
        True when a convergence criterion (``tol``, exact fit) stopped the fit.
    stop_reason:
        Why the fit stopped, plus notes on anything unusual (ridge applied, singular
        normal equations, zero tensor, ...).
    seconds:
        Wall-clock seconds of the whole fit (initialisation included).
    info:
        Extra diagnostics (line-search acceptances, solver notes, ...).
    method:
        The fitting method: ``"als"`` or ``"gradient"`` (empty when not recorded).

    Notes
    -----
    ``print(result)`` shows one line (method, rank, shape, fit, iterations,
    convergence), never the arrays or the history; the fields hold the rest. Functions that
    take a CP model (:func:`cptensor.reconstruct`, :func:`cptensor.score`, ``init=`` of
    the fits, ...) accept a ``CPFit`` for its ``cp``.

    Examples
    --------
    >>> import numpy as np
    >>> import cptensor as ct
    >>> from cptensor.fit import fit_als
    >>> x = ct.reconstruct(ct.init.random((4, 5, 6), 2, seed=0))
    >>> result = fit_als(x, 2, seed=0)
    >>> result.converged, result.rel_error < 1e-6
    (True, True)
    >>> result  # doctest: +ELLIPSIS
    CPFit(method='als', rank=2, shape=(4, 5, 6), fit=1, rel_error=..., n_iter=..., converged=True)
    """

    cp: CPTensor
    fit: float
    rel_error: float
    history: tuple[float, ...]
    n_iter: int
    converged: bool
    stop_reason: str
    seconds: float
    info: Mapping[str, Any] = field(default_factory=dict)
    method: str = ""

    def __repr__(self) -> str:
        method = f"method={self.method!r}, " if self.method else ""
        return (
            f"CPFit({method}rank={self.cp.rank}, shape={self.cp.shape}, fit={self.fit:.6g}, "
            f"rel_error={self.rel_error:.3g}, n_iter={self.n_iter}, "
            f"converged={self.converged})"
        )


@dataclass(frozen=True)
class FitState:
    """What a ``callback`` receives after each iteration (return True to stop).

    ``cp`` is the current model (not yet arranged), ``fit`` and ``rel_error`` the current
    estimates (the cheap formula unless ``exact`` is True).

    Examples
    --------
    >>> import cptensor as ct
    >>> from cptensor.fit import fit_als
    >>> x = ct.reconstruct(ct.init.random((4, 5, 6), 2, seed=0)) + 0.1
    >>> seen = []
    >>> def stop_at_3(state):
    ...     seen.append(state.iteration)
    ...     return state.iteration == 3
    >>> result = fit_als(x, 2, seed=0, callback=stop_at_3)
    >>> seen, result.stop_reason
    ([1, 2, 3], 'stopped by callback at iteration 3')
    """

    iteration: int
    fit: float
    rel_error: float
    exact: bool
    cp: CPTensor
