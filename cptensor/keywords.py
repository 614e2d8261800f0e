"""Other libraries' keyword names, recognised so that a wrong one says what to write.

Users coming from TensorLy write ``fit_als(x, 3, n_iter_max=200, random_state=0)``, and
users coming from PEFT write ``AdapterConfig(lora_alpha=16)``. Python's own answer, "got an
unexpected keyword argument", leaves them to guess the name. The functions of ``cptensor``
that such users call instead raise a :class:`~cptensor.errors.CPTensorTypeError` (also a
``TypeError``) that names the library and the keyword to use, or says why there is no
equivalent (below); a name that is no other library's gets the closest accepted one.

The tables below are the single source of these hints (the "Coming from TensorLy" page
shows the TensorLy one); :func:`check_keywords` applies one to any call, and
:func:`tensorly_keywords` decorates a function with the TensorLy table.

>>> import numpy as np
>>> import cptensor as ct
>>> try:
...     ct.fit_als(np.ones((2, 3, 4)), 1, n_iter_max=10)
... except TypeError as err:
...     print(err)
fit_als() got an unexpected keyword 'n_iter_max' (TensorLy's name): use max_iter=...
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ParamSpec, TypeVar

from .errors import CPTensorTypeError

__all__ = [
    "PEFT_KEYWORDS",
    "TENSORLY_KEYWORDS",
    "KeywordHint",
    "check_keywords",
    "tensorly_keywords",
]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class KeywordHint:
    """What to write here instead of another library's keyword.

    Attributes
    ----------
    library : str
        The library the keyword comes from (``"TensorLy"``, ``"PEFT"``).
    use : str or None
        The keyword of ``cptensor`` that does the same job (possibly the same name, for
        the functions that take it), or ``None`` when there is no equivalent.
    note : str
        How the value differs, or why there is no equivalent.

    Examples
    --------
    >>> TENSORLY_KEYWORDS["n_iter_max"].use
    'max_iter'
    >>> TENSORLY_KEYWORDS["normalize_factors"].use is None
    True
    """

    library: str
    use: str | None
    note: str = ""


def _tl(use: str | None, note: str = "") -> KeywordHint:
    return KeywordHint("TensorLy", use, note)


def _peft(use: str | None, note: str = "") -> KeywordHint:
    return KeywordHint("PEFT", use, note)


#: TensorLy keyword → its ``cptensor`` counterpart (``parafac``, ``CP``,
#: ``non_negative_parafac_hals``, ``random_cp``, ``initialize_cp``).
TENSORLY_KEYWORDS: Mapping[str, KeywordHint] = MappingProxyType(
    {
        "n_iter_max": _tl("max_iter"),
        "random_state": _tl("seed", "an int or a numpy.random.Generator"),
        "verbose": _tl("progress", "progress=True shows a tqdm bar with the current fit"),
        "return_errors": _tl(
            None,
            "the errors are always returned: CPFit.history holds the fit (1 - relative "
            "error) after every iteration",
        ),
        "normalize_factors": _tl(
            None,
            "the fitted model is always normalized: CPFit.cp has unit-norm factor columns "
            "with the norms in its weights (cptensor.normalize does it for any CPTensor)",
        ),
        "normalise_factors": _tl(
            None, "use cptensor.normalize(cp) on the result (init.* returns unit weights)"
        ),
        "linesearch": _tl("line_search", "on by default here"),
        "l2_reg": _tl(
            "l2_reg",
            "fit_als(l2_reg=) is TensorLy's penalty on every factor; ridge= penalises the "
            "factor being updated with the others normalized",
        ),
        "cvg_criterion": _tl(
            None,
            "convergence is always judged on the relative change of the fit between "
            "iterations (tol=), with the final error computed exactly",
        ),
        "svd": _tl(
            None,
            "init='svd' chooses its own method (Gram eigenvectors of the small side, or a "
            "seeded randomized SVD when both sides are large)",
        ),
        "svd_mask_repeats": _tl(
            None,
            "with a mask, init='svd' starts from x with missing entries at the mean of the "
            "observed ones",
        ),
        "sparsity": _tl(
            None,
            "no sparse-plus-low-rank fit; fit the CP model and take the residual "
            "x - reconstruct(fit.cp) yourself",
        ),
        "sparsity_coefficients": _tl(
            None, "no sparsity penalty (fit_als(nonnegative=True) gives non-negative factors)"
        ),
        "orthogonalise": _tl(
            None, "no orthogonalised ALS; init='orthogonal' gives an orthogonal start"
        ),
        "nn_modes": _tl("nonnegative", "the modes to constrain, e.g. nonnegative=(0, 2)"),
        "exact": _tl(None, "HALS here always runs one exact pass per mode and sweep"),
        "tol": _tl("tol", "fit_als and fit_gradient take tol="),
        "mask": _tl("mask", "fit_als and fit_gradient take mask=, True = observed"),
        "fixed_modes": _tl("fixed_modes", "fit_als takes fixed_modes="),
        "init": _tl(
            "init", "fit_als and fit_gradient take init='svd', 'random', 'orthogonal' or a CP model"
        ),
        "full": _tl(None, "call cptensor.reconstruct on the result for the dense tensor"),
        "orthogonal": _tl(None, "call cptensor.init.orthogonal instead"),
    }
)

#: PEFT ``LoraConfig`` keyword → its ``cptensor_adapters.AdapterConfig`` counterpart.
PEFT_KEYWORDS: Mapping[str, KeywordHint] = MappingProxyType(
    {
        "r": _peft("r", "the CP rank (for layout='lora', the rank of each matrix's update)"),
        "lora_alpha": _peft("alpha", "the update is scaled by alpha / r, as in PEFT"),
        "lora_dropout": _peft("dropout", "dropout on the adapter's input"),
        "target_modules": _peft("targets", "a list of names or a regex, as in PEFT"),
        "modules_to_save": _peft("modules_to_save", "trained in full beside the adapter"),
        "init_lora_weights": _peft("init", "'default' (the model is unchanged at the start)"),
        "bias": _peft(None, "the adapter trains no biases; list a module in modules_to_save"),
        "task_type": _peft(
            None,
            "not needed: the adapter wraps the attention modules of any model; train the "
            "task head through modules_to_save",
        ),
        "fan_in_fan_out": _peft(None, "detected from the module (GPT-2's Conv1D)"),
        "rank_pattern": _peft(None, "one rank per adapter"),
        "alpha_pattern": _peft(None, "one alpha per adapter"),
        "use_rslora": _peft(None, "not supported"),
        "use_dora": _peft(None, "not supported"),
    }
)


def _message(
    owner: str, name: str, accepted: Collection[str], hints: Mapping[str, KeywordHint]
) -> str:
    head = f"{owner}() got an unexpected keyword {name!r}"
    hint = hints.get(name)
    if hint is not None:
        head += f" ({hint.library}'s name)"
        note = f" ({hint.note})" if hint.note else ""
        if hint.use is not None and hint.use in accepted:
            return f"{head}: use {hint.use}=..." + note
        if hint.use is None:
            return f"{head}: no equivalent here: {hint.note}"
        if hint.use != name:
            return f"{head}: it means {hint.use}=, which {owner}() does not take either{note}"
        return f"{head}: {owner}() does not take it{note}"
    close = difflib.get_close_matches(name, list(accepted), n=1)
    guess = f"; did you mean {close[0]}=?" if close else ""
    return f"{head}{guess} (it takes: {', '.join(accepted)})"


def check_keywords(
    owner: str,
    given: Iterable[str],
    accepted: Collection[str],
    hints: Mapping[str, KeywordHint] = TENSORLY_KEYWORDS,
) -> None:
    """Refuse the first keyword of ``given`` that ``accepted`` lacks, with a hint.

    Parameters
    ----------
    owner:
        The function or class named in the message (``"fit_als"``, ``"AdapterConfig"``).
    given:
        The keyword names of the call.
    accepted:
        The keyword names the callee takes, in the order to list them.
    hints:
        One of the tables of this module (or a merge of them).

    Raises
    ------
    CPTensorTypeError
        For the first keyword not in ``accepted``; ``argument`` is that keyword. A name in
        ``hints`` is answered with the keyword to use or why there is none; any other with
        the closest accepted name, if one is close, and the list of accepted names.

    Examples
    --------
    >>> check_keywords("AdapterConfig", ["lora_alpha"], ["r", "alpha"], PEFT_KEYWORDS)
    Traceback (most recent call last):
    ...
    cptensor.errors.CPTensorTypeError: AdapterConfig() got an unexpected keyword 'lora_alpha'
    (PEFT's name): use alpha=... (the update is scaled by alpha / r, as in PEFT)
    """
    for name in given:
        if name not in accepted:
            raise CPTensorTypeError(_message(owner, name, accepted, hints), argument=name)


def tensorly_keywords(owner: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a function so that an unknown keyword is answered with a hint.

    Unknown keywords are checked against :data:`TENSORLY_KEYWORDS` by
    :func:`check_keywords` before the call; everything else (positional arguments, known
    keywords) goes through untouched, and the signature, docstring and annotations are
    the function's own.

    Parameters
    ----------
    owner:
        The name shown in messages, e.g. ``"fit_als"`` or ``"init.random"``.

    Returns
    -------
    Callable
        The decorator.

    Examples
    --------
    >>> @tensorly_keywords("scaled")
    ... def scaled(x, *, seed=None):
    ...     return x
    >>> scaled(1, random_state=0)
    Traceback (most recent call last):
    ...
    cptensor.errors.CPTensorTypeError: scaled() got an unexpected keyword 'random_state'
    (TensorLy's name): use seed=... (an int or a numpy.random.Generator)
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        params = inspect.signature(func).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return func  # takes any keyword: nothing is unexpected
        accepted = tuple(
            p.name
            for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        )
        known = frozenset(accepted)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if not known.issuperset(kwargs):
                check_keywords(owner, kwargs, accepted)
            return func(*args, **kwargs)

        return wrapper

    return decorate
