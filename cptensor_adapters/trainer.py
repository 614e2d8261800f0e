"""Hugging Face ``Trainer`` checkpoints that hold the adapters, not the whole model.

A ``transformers.Trainer`` saves a checkpoint by writing the model's whole state dict and
resumes by loading it back; for a PEFT model it writes and reads the adapter instead.
:class:`AdapterTrainer` does the same for this library's adapters: each checkpoint
(``save_strategy="steps"`` or ``"epoch"``, and ``save_model``) holds every adapter of the
model as written by :func:`~cptensor_adapters.save_adapter` — ``default`` in the
checkpoint directory itself, any other adapter in a subdirectory of its name — with the
``modules_to_save`` copies, beside the optimizer, scheduler, RNG and trainer states the
``Trainer`` writes itself. ``resume_from_checkpoint`` copies the saved factors back into
the adapters the model already has (:func:`~cptensor_adapters.load_adapter_weights`), so
the resumed run continues exactly where the interrupted one stopped, and
``load_best_model_at_end`` does the same with the best checkpoint.

Only the ``Trainer``'s private ``_save`` and ``_load_from_checkpoint`` hooks are replaced
(as the ``Trainer`` itself special-cases PEFT models there), and, when the ``Trainer``
shards the model with FSDP (``fsdp=...`` or an Accelerate FSDP config), ``save_model``
and ``_save_optimizer_and_scheduler``: under FSDP the ``Trainer`` would gather the whole
model's state dict (``FULL_STATE_DICT``) or skip ``_save`` altogether
(``SHARDED_STATE_DICT``), and write the whole sharded model beside the optimizer; an
:class:`AdapterTrainer` writes the adapters instead (every rank gathers them, rank 0
writes) and the optimizer state, nothing of the base model. Everything else is the
``Trainer`` unchanged. The same hooks are available as a mixin,
:class:`AdapterCheckpoints`, for other ``Trainer`` subclasses (TRL's trainers:
:mod:`cptensor_adapters.trl_trainers`).

Examples
--------
>>> import tempfile, torch
>>> from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
>>> import cptensor_adapters as cpa
>>> cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
...                  intermediate_size=64, vocab_size=50)
>>> model = cpa.attach(BertForSequenceClassification(cfg),
...                    cpa.AdapterConfig(r=2, modules_to_save=["classifier"]))
>>> data = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor(i % 2)}
...         for i in range(8)]
>>> with tempfile.TemporaryDirectory() as out:  # doctest: +ELLIPSIS
...     args = TrainingArguments(out, max_steps=2, save_steps=2, per_device_train_batch_size=4,
...                              report_to=[], use_cpu=True, disable_tqdm=True,
...                              logging_strategy="no")
...     _ = AdapterTrainer(model=model, args=args, train_dataset=data).train()
...     sorted(p.name for p in (Path(out) / "checkpoint-2").iterdir() if "adapter" in p.name)
{'train_runtime': ...}
['adapter_config.json', 'adapter_model.safetensors']
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from .io import load_adapter_weights, save_adapter
from .model import adapter_names

__all__ = ["AdapterCheckpoints", "AdapterTrainer", "adapter_checkpoint_dir"]

#: What the ``Trainer`` writes beside the model (kept as it names them).
_TRAINING_ARGS = "training_args.bin"
_SCHEDULER = "scheduler.pt"


def adapter_checkpoint_dir(checkpoint: str | os.PathLike[str], name: str) -> Path:
    """Where adapter ``name`` lives in a checkpoint written by :class:`AdapterTrainer`:
    the checkpoint directory for ``"default"`` (as PEFT does), a subdirectory otherwise.

    Examples
    --------
    >>> adapter_checkpoint_dir("out/checkpoint-10", "default"), adapter_checkpoint_dir(
    ...     "out/checkpoint-10", "style")
    (PosixPath('out/checkpoint-10'), PosixPath('out/checkpoint-10/style'))
    """
    root = Path(checkpoint)
    return root if name == "default" else root / name


class AdapterCheckpoints:
    """Mixin for a ``transformers.Trainer`` subclass: its checkpoints hold the model's
    adapters (see the module docstring). List it before the ``Trainer`` class, as in
    ``class MyTrainer(AdapterCheckpoints, Trainer)``.

    Examples
    --------
    >>> class MyTrainer(AdapterCheckpoints, Trainer):
    ...     pass
    >>> [c.__name__ for c in MyTrainer.__mro__[:3]]
    ['MyTrainer', 'AdapterCheckpoints', 'Trainer']
    """

    # the Trainer attributes the hooks use (set by Trainer.__init__)
    args: Any
    accelerator: Any
    model: Any
    optimizer: Any
    lr_scheduler: Any
    processing_class: Any
    state: Any
    is_fsdp_enabled: bool

    def _unwrapped(self, model: Any = None) -> torch.nn.Module:
        return self.accelerator.unwrap_model(model if model is not None else self.model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write every adapter (not the model) to ``output_dir``; collective: every rank
        calls it (rank 0 writes), as ``Trainer.save_model`` does."""
        out = Path(output_dir if output_dir is not None else self.args.output_dir)
        model = self._unwrapped()
        for name in adapter_names(model):
            save_adapter(model, adapter_checkpoint_dir(out, name), name)
        if not self.args.should_save:
            return
        if self.processing_class is not None:
            self.processing_class.save_pretrained(str(out))
        torch.save(self.args, out / _TRAINING_ARGS)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``, except under FSDP, where it would gather the whole
        model's state dict (or, with ``SHARDED_STATE_DICT``, not call ``_save`` at all):
        every rank gathers the adapters alone, and rank 0 writes them."""
        if not getattr(self, "is_fsdp_enabled", False):
            super().save_model(output_dir, _internal_call)  # type: ignore[misc]
            return
        self._save(output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(  # type: ignore[attr-defined]
                commit_message="Model save", revision=self.args.hub_revision
            )

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not getattr(self, "is_fsdp_enabled", False):
            super()._save_optimizer_and_scheduler(output_dir)  # type: ignore[misc]
            return
        # the Trainer would also write the whole sharded model here (accelerate's
        # save_fsdp_model keeps only a PEFT model's adapter): the optimizer state alone
        from accelerate.utils import save_fsdp_optimizer

        plugin = self.accelerator.state.fsdp_plugin
        save_fsdp_optimizer(plugin, self.accelerator, self.optimizer, self.model, output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / _SCHEDULER)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Copy the adapters saved in ``resume_from_checkpoint`` into the model's own."""
        target = self._unwrapped(model)
        for name in adapter_names(target):
            load_adapter_weights(target, adapter_checkpoint_dir(resume_from_checkpoint, name), name)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best is not None:
            self._load_from_checkpoint(best)


class AdapterTrainer(AdapterCheckpoints, Trainer):
    """A ``transformers.Trainer`` whose checkpoints hold the model's adapters.

    Use it as the ``Trainer`` (same arguments). See the module docstring for what a
    checkpoint holds and how resuming works.

    Examples
    --------
    >>> issubclass(AdapterTrainer, Trainer)
    True
    """
