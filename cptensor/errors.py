"""The error type of the library: bad input, named.

Every function of ``cptensor`` and ``cptensor_adapters`` that refuses its input raises a
:class:`CPTensorError` (a ``ValueError``), or one of its two variants that are also a
``TypeError`` (an argument of the wrong type) or a ``KeyError`` (an unknown name), so
existing ``except ValueError`` / ``TypeError`` / ``KeyError`` handlers keep working. The
message starts with the argument or file it is about; :attr:`CPTensorError.argument`
holds that name. The ``cptensor`` command turns exactly these (and file errors) into one-line
messages; anything else is a bug and keeps its traceback (as einops re-raises its single
``EinopsError``).

>>> import numpy as np
>>> import cptensor as ct
>>> try:
...     ct.CPTensor(None, [np.ones((2, 2), dtype=int)])
... except CPTensorError as err:
...     print(type(err).__name__, err.argument)
CPTensorTypeError factors[0]
"""

from __future__ import annotations

import re

__all__ = ["CPTensorError", "CPTensorKeyError", "CPTensorTypeError"]

_ARGUMENT = re.compile(r"^([A-Za-z_][\w.\[\]'\"-]*)[:\s]")


class CPTensorError(ValueError):
    """Bad input to ``cptensor`` or ``cptensor_adapters``; the message names the argument.

    Attributes
    ----------
    argument : str or None
        the argument, field or file the message starts with (``None`` when it
        does not start with one).

    Examples
    --------
    >>> CPTensorError("rank: expected an integer >= 1, got 0").argument
    'rank'
    """

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(message)
        if argument is None:
            m = _ARGUMENT.match(message)
            argument = m.group(1) if m else None
        self.argument = argument

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CPTensorTypeError(CPTensorError, TypeError):
    """An argument of the wrong type (also a ``TypeError``).

    >>> isinstance(CPTensorTypeError("x: expected an array"), TypeError)
    True
    """


class CPTensorKeyError(CPTensorError, KeyError):
    """An unknown name (also a ``KeyError``; its message is not quoted like a key).

    >>> str(CPTensorKeyError("name: no adapter 'x'"))
    "name: no adapter 'x'"
    """
