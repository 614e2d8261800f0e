"""Initialisations of an adapter's CP factors: one formula per mode, documented and tested.

Every factor is a ``(size × r)`` matrix. Under every initialisation but ``"random"`` one
matrix factor is zero, so ``ΔW = 0`` and the adapted model computes exactly what the base
model computes until the first optimizer step. The others are drawn uniformly in
``±bound``, independently per mode, from a generator seeded by ``(seed, group, mode)``:

================  ======================  =====================  ===========================
init              ``out`` factor          ``in`` factor          ``head``, ``layer``,
                                                                 ``matrix`` factors
================  ======================  =====================  ===========================
``"default"``     ``±1/√r``               ``0``                  ``±1/√r``
``"reference"``   ``±1/√r``               ``0``                  ``±√(6/r)``
``"scaled"``      ``±1/√size``            ``0``                  ``±√3`` (RMS 1)
``"zero_out"``    ``0``                   ``±1/√r``              ``±1/√r``
``"random"``      ``±1/√r``               ``±1/√r``              ``±1/√r``
================  ======================  =====================  ===========================

- ``"reference"`` is the paper's code (``ihounie/lorta``, ``peft/tuners/lorta/model.py``):
  ``kaiming_uniform_(a=√5)`` on the ``(d × r)`` factor ``A`` (our ``out``),
  ``kaiming_uniform_(a=0)`` on the ``(n × r)`` head, layer and matrix factors, and the
  per-head factor ``B`` (our ``in``) zero. PyTorch takes the fan-in of an ``(n × r)``
  tensor to be ``r``, hence the bounds ``1/√r`` and ``√(6/r)``. (That code splits the heads
  along the *input* of all four matrices; ``head_split="in"`` reproduces that too.)
- ``"default"`` is the first release's: ``kaiming_uniform_(a=√5)`` on every factor.
- ``"scaled"`` makes every block of the update distributed like a LoRA update at the same
  rank and ``alpha``: the coefficient factors have RMS 1, so their product (one
  coefficient per head, layer and matrix) has RMS 1 whatever the number of modes, and the
  ``out`` factor is drawn like PEFT's ``lora_A`` (``kaiming_uniform_(a=√5)`` on the
  ``(r × size)`` matrix: ``±1/√size``). Under Adam every factor moves by about the learning
  rate per step, so ``ΔW`` then grows as fast as LoRA's at the same learning rate, where
  under ``"default"`` the three coefficient factors shrink its growth by their product
  (RMS ``(1/√(3r))³``, 0.0085 at ``r = 8``).

Examples
--------
>>> factor_bound("reference", "head", 12, r=8)  # √(6/8)
0.8660254037844386
>>> factor_bound("scaled", "out", 384, r=8)  # 1/√384
0.05103103630798288
>>> factor_bound("default", "in", 32, r=8) is None  # zero
True
"""

from __future__ import annotations

import math

import torch

from cptensor.errors import CPTensorError

__all__ = ["INITS", "draw_factor", "factor_bound"]

#: The initialisations (see the module docstring for their formulas).
INITS: tuple[str, ...] = ("default", "reference", "scaled", "zero_out", "random")

_COEFFICIENT_MODES = ("head", "layer", "matrix")
_MODES = ("out", "in", *_COEFFICIENT_MODES)


def _zero_mode(init: str) -> str | None:
    if init == "random":
        return None
    return "out" if init == "zero_out" else "in"


def factor_bound(init: str, mode: str, size: int, r: int) -> float | None:
    """The bound ``b`` of the uniform distribution ``U(−b, b)`` of one factor's entries, or
    ``None`` when the factor starts at zero.

    Parameters
    ----------
    init : str
        one of :data:`INITS`.
    mode : str
        ``"out"``, ``"in"``, ``"head"``, ``"layer"`` or ``"matrix"``.
    size : int
        the factor's number of rows (the mode's size).
    r : int
        the rank (the factor's number of columns).

    Raises
    ------
    ValueError
        an unknown ``init`` or ``mode``, or sizes below 1.

    Examples
    --------
    >>> round(factor_bound("default", "layer", 6, r=4), 12)  # 1/√4
    0.5
    """
    if init not in INITS:
        raise CPTensorError(f"init: expected one of {INITS}, got {init!r}")
    if mode not in _MODES:
        raise CPTensorError(f"mode: expected one of {_MODES}, got {mode!r}")
    if size < 1 or r < 1:
        raise CPTensorError(f"size and r: expected integers >= 1, got {size} and {r}")
    if mode == _zero_mode(init):
        return None
    if init == "reference" and mode in _COEFFICIENT_MODES:
        return _kaiming_bound(0.0, fan_in=r)
    if init == "scaled":
        return math.sqrt(3.0) if mode in _COEFFICIENT_MODES else _kaiming_bound(math.sqrt(5), size)
    return _kaiming_bound(math.sqrt(5), fan_in=r)


def _kaiming_bound(a: float, fan_in: int) -> float:
    """``torch.nn.init.kaiming_uniform_``'s bound for leaky-ReLU slope ``a``."""
    gain = math.sqrt(2.0 / (1.0 + a * a))
    return gain * math.sqrt(3.0 / fan_in)


def draw_factor(
    init: str,
    mode: str,
    shape: tuple[int, int],
    generator: torch.Generator,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One ``(size × r)`` factor drawn by :func:`factor_bound`'s formula, in float32.

    The draws are those of ``torch.nn.init.kaiming_uniform_`` (``uniform_(−b, b)`` with
    ``generator``), so ``"reference"`` repeats the paper's calls exactly, given the same
    generator state.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> f = draw_factor("scaled", "head", (12, 8), g)
    >>> bool(f.abs().max() <= 3 ** 0.5), tuple(f.shape)
    (True, (12, 8))
    """
    size, r = shape
    bound = factor_bound(init, mode, size, r)
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    if bound is not None:
        out.uniform_(-bound, bound, generator=generator)
    return out
