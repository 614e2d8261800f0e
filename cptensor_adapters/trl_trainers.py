"""TRL's ``SFTTrainer`` and ``DPOTrainer`` for models with this library's adapters.

TRL (``trl``) special-cases PEFT models: their checkpoints hold the adapter, and
``DPOTrainer`` needs no copy of the model as its reference, because switching the
adapter off gives back the base model. :class:`AdapterSFTTrainer` and
:class:`AdapterDPOTrainer` do the same for a model with adapters attached by
:func:`~cptensor_adapters.attach`:

- **Checkpoints** hold every adapter (and the ``modules_to_save`` copies), not the base
  model, and resume exactly, through the hooks of
  :class:`~cptensor_adapters.trainer.AdapterCheckpoints` (as
  :class:`~cptensor_adapters.trainer.AdapterTrainer` does for the plain ``Trainer``).
- **The DPO reference** is the policy itself with its adapters switched off
  (:func:`~cptensor_adapters.disabled`), when no ``ref_model`` is given: no second model
  is loaded or kept, ``trainer.ref_model`` stays ``None``, and the reference log-probs of
  a batch are those of the base model. That is the initial policy when the adapters start
  at :math:`\\Delta W = 0` (the default initialisations); an adapter that starts elsewhere
  (``init="random"``, a loaded adapter) is trained against the base model, not against
  its starting point — as TRL does for a PEFT model on PEFT < 0.20. With
  ``precompute_ref_log_probs=True`` the reference log-probs are computed the same way,
  once, before training. ``sync_ref_model`` needs a separate reference model and is
  refused without one, as TRL refuses it for PEFT models.

Written against TRL 1.16: the implicit reference replaces the ``DPOTrainer``'s private
``_compute_loss`` hook and, while the trainer is constructed, the function with which it
would load a reference copy of the model from ``model.config``'s name (the same places
where TRL branches for PEFT models).

Examples
--------
>>> issubclass(AdapterDPOTrainer, DPOTrainer), issubclass(AdapterSFTTrainer, SFTTrainer)
(True, True)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from trl import DPOTrainer, SFTTrainer

from cptensor.errors import CPTensorError

from .model import adapter_names, disabled
from .trainer import AdapterCheckpoints

__all__ = ["AdapterDPOTrainer", "AdapterSFTTrainer"]


def _require_adapted(model: Any, trainer: str) -> None:
    if not isinstance(model, nn.Module) or not adapter_names(model):
        got = repr(model) if isinstance(model, str) else type(model).__name__
        raise CPTensorError(
            f"model: {trainer} expects a model with adapters attached "
            f"(cptensor_adapters.attach(model, config)), got {got}"
        )


def _refuse_peft_config(kwargs: dict[str, Any], trainer: str) -> None:
    if kwargs.get("peft_config") is not None:
        raise CPTensorError(
            f"peft_config: {trainer} trains the adapters the model already has; pass "
            "peft_config=None (attach a LoRA-like adapter with AdapterConfig(layout='lora'))"
        )


class AdapterSFTTrainer(AdapterCheckpoints, SFTTrainer):
    """TRL's ``SFTTrainer`` for a model with adapters: only the adapters' factors (and
    ``modules_to_save`` copies) train, and checkpoints hold the adapters.

    Takes the ``SFTTrainer``'s arguments; ``model`` must be a model (not a name) with
    adapters attached, and ``peft_config`` must be ``None``.

    Raises
    ------
    CPTensorError
        ``model`` has no adapters, or a ``peft_config`` was given.

    Examples
    --------
    >>> AdapterSFTTrainer(model="gpt2")
    Traceback (most recent call last):
    ...
    cptensor.errors.CPTensorError: model: AdapterSFTTrainer expects a model with adapters ...
    """

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        _require_adapted(model, type(self).__name__)
        _refuse_peft_config(kwargs, type(self).__name__)
        super().__init__(model, *args, **kwargs)


class _AdaptersOff:
    """Stands in for a reference model for one loss computation: the trainer's own model
    with every adapter switched off."""

    def __init__(self, trainer: AdapterDPOTrainer) -> None:
        self.trainer = trainer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with disabled(self.trainer.accelerator.unwrap_model(self.trainer.model)):
            return self.trainer.model(*args, **kwargs)


@contextmanager
def _no_reference_copy() -> Iterator[None]:
    """While the ``DPOTrainer`` is built, its reference-model loader returns ``None``
    instead of a copy of the model, as it does for a PEFT model."""
    import trl.trainer.dpo_trainer as dpo

    loader = getattr(dpo, "create_model_from_path", None)
    if loader is None:  # pragma: no cover - a TRL this module was not written for
        raise CPTensorError(
            "ref_model: this TRL has no trl.trainer.dpo_trainer.create_model_from_path, on "
            "which the implicit reference relies (written for trl>=1.16); pass a ref_model"
        )
    dpo.create_model_from_path = lambda *args, **kwargs: None  # type: ignore[attr-defined]
    try:
        yield
    finally:
        dpo.create_model_from_path = loader  # type: ignore[attr-defined]


class AdapterDPOTrainer(AdapterCheckpoints, DPOTrainer):
    """TRL's ``DPOTrainer`` for a model with adapters; without a ``ref_model``, the
    reference is the same model with its adapters switched off (no copy is made).

    Takes the ``DPOTrainer``'s arguments; ``model`` must be a model (not a name) with
    adapters attached, and ``peft_config`` must be ``None``. A ``ref_model`` given
    explicitly is used as the ``DPOTrainer`` uses it. Checkpoints hold the adapters.

    Raises
    ------
    CPTensorError
        ``model`` has no adapters, a ``peft_config`` was given, or ``sync_ref_model`` was
        asked for without a ``ref_model``.

    Examples
    --------
    >>> AdapterDPOTrainer(model="gpt2")
    Traceback (most recent call last):
    ...
    cptensor.errors.CPTensorError: model: AdapterDPOTrainer expects a model with adapters ...
    """

    def __init__(self, model: Any, ref_model: Any = None, *args: Any, **kwargs: Any) -> None:
        _require_adapted(model, type(self).__name__)
        _refuse_peft_config(kwargs, type(self).__name__)
        self._implicit_reference = ref_model is None
        if ref_model is not None:
            super().__init__(model, ref_model, *args, **kwargs)
            return
        config = args[0] if args else kwargs.get("args")
        if config is not None and getattr(config, "sync_ref_model", False):
            raise CPTensorError(
                "args.sync_ref_model: the reference is the model with its adapters switched "
                "off, not a separate model that could be synchronised; pass a ref_model or "
                "set sync_ref_model=False"
            )
        with _no_reference_copy():
            super().__init__(model, None, *args, **kwargs)

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> Any:
        """The ``DPOTrainer``'s reference log-probs of a batch (chosen, rejected); with
        the implicit reference, computed with every adapter switched off."""
        if not self._implicit_reference:
            return super().compute_ref_log_probs(model, inputs)
        with disabled(self.accelerator.unwrap_model(self.model)):
            return super().compute_ref_log_probs(model, inputs)

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        if not self._implicit_reference or self.precompute_ref_logps:
            return super()._compute_loss(model, inputs, return_outputs)
        # the DPOTrainer calls self.ref_model for the reference forward pass; between
        # loss computations it stays None, as for a PEFT model
        self.ref_model = _AdaptersOff(self)
        try:
            return super()._compute_loss(model, inputs, return_outputs)
        finally:
            self.ref_model = None
