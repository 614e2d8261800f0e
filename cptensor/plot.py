"""A first look at a CP model: its components, one subplot per mode (needs matplotlib).

As tlviz's ``components_plot``: each mode's factor matrix is drawn as one line per
component over the mode's index, and the legend gives each component's weight. The
figure is a plain :class:`matplotlib.figure.Figure`, made without ``pyplot``: nothing is
shown or registered in a global figure list; save it with ``fig.savefig(path)`` (in a
notebook, display it by evaluating ``fig``). matplotlib is imported only when a plot is
made, so ``cptensor`` does not need it otherwise.

>>> import numpy as np
>>> import cptensor as ct
>>> cp = ct.init.random((20, 15, 10), 3, seed=0)
>>> fig = ct.plot.components(cp)
>>> len(fig.axes), [len(ax.get_lines()) for ax in fig.axes]
(3, [3, 3, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._backend import is_complex, to_numpy
from .cp import as_cp
from .errors import CPTensorError, CPTensorTypeError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["components"]


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "cptensor.plot needs the optional 'matplotlib' package; install it "
            "(pip install matplotlib, or the cptensor[plot] extra)"
        ) from None
    return Figure


def components(
    cp: Any,
    *,
    normalize: bool = True,
    mode_names: Sequence[str] | None = None,
    max_components: int | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Plot the components of a CP model: one subplot per mode, one line per component.

    Parameters
    ----------
    cp:
        The CP model: a :class:`~cptensor.CPTensor`, a :class:`~cptensor.fit.CPFit`, a
        TensorLy ``CPTensor`` or a ``(weights, factors)`` pair (see
        :func:`cptensor.as_cp`); any backend or device (the values are copied to the host).
    normalize:
        Draw unit-norm factor columns with the norms moved into the weights shown in the
        legend (as tlviz's default ``weight_behaviour="normalise"``). With ``False``, the
        factors are drawn as they are and the legend shows the model's own weights.
    mode_names:
        One title per mode (default ``"mode 0"``, ``"mode 1"``, ...).
    max_components:
        Draw only the first ``max_components`` components (all by default).
    figsize:
        Figure size in inches (default: 3.5 wide per mode, 3 high).

    Returns
    -------
    matplotlib.figure.Figure
        One axes per mode (``fig.axes``), each with one line per drawn component (real
        part for complex factors). The legend is on the first axes.

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    CPTensorTypeError, CPTensorError
        When ``cp`` is not a CP model, or an option is of the wrong type or out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from cptensor import CPTensor
    >>> from cptensor.plot import components
    >>> cp = CPTensor(np.array([2.0, 1.0]), [np.eye(4)[:, :2], np.ones((3, 2))])
    >>> fig = components(cp, mode_names=["time", "channel"])
    >>> [ax.get_title() for ax in fig.axes]
    ['time', 'channel']
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['0: λ = 3.46', '1: λ = 1.73']
    """
    cp = as_cp(cp)
    if not isinstance(normalize, (bool, np.bool_)):
        raise CPTensorTypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    if mode_names is not None:
        if isinstance(mode_names, str) or not isinstance(mode_names, Sequence):
            raise CPTensorTypeError(
                f"mode_names must be a sequence of {cp.ndim} strings, "
                f"got {type(mode_names).__name__}"
            )
        if len(mode_names) != cp.ndim:
            raise CPTensorError(
                f"mode_names has {len(mode_names)} names, expected one per mode ({cp.ndim})"
            )
    rank = cp.rank
    if max_components is not None:
        if isinstance(max_components, bool) or not isinstance(max_components, (int, np.integer)):
            raise CPTensorTypeError(
                f"max_components must be an int or None, got {type(max_components).__name__}"
            )
        if max_components < 1:
            raise CPTensorError(f"max_components must be >= 1, got {max_components}")
        rank = min(rank, int(max_components))
    figure_class = _figure_class()

    weights = to_numpy(cp.weights)[:rank]
    factors = [to_numpy(f)[:, :rank] for f in cp.factors]
    if normalize:
        for n, f in enumerate(factors):
            norms = np.linalg.norm(f, axis=0)
            factors[n] = f / np.where(norms > 0, norms, 1.0)
            weights = weights * norms
    if is_complex(cp.factors[0]):
        factors = [np.real(f) for f in factors]
    names = list(mode_names) if mode_names is not None else [f"mode {n}" for n in range(cp.ndim)]

    size = figsize if figsize is not None else (3.5 * cp.ndim, 3.0)
    fig = figure_class(figsize=size, layout="constrained")
    axes = fig.subplots(1, cp.ndim, squeeze=False)[0]
    for ax, f, name in zip(axes, factors, names):
        for r in range(rank):
            ax.plot(np.arange(f.shape[0]), f[:, r], label=f"{r}: λ = {_fmt(weights[r])}")
        ax.set_title(name)
        ax.set_xlabel("index")
    axes[0].legend(title="component", fontsize="small")
    return fig


def _fmt(w: Any) -> str:
    """A weight for the legend: 3 significant digits (complex: its magnitude)."""
    return f"{float(np.abs(w)) if np.iscomplexobj(w) else float(w):.3g}"
