"""Saving and loading adapters: ``adapter_model.safetensors`` + ``adapter_config.json``.

The safetensors file holds each shared CP factor once (``groups.<i>.<mode>``) and the
``modules_to_save`` copies (``modules_to_save.<module path>.<parameter>``); the JSON file
holds the :class:`~cptensor_adapters.AdapterConfig`, the adapter's name and the weight grid
it was trained on, which :func:`load_adapter` checks against the model. Both files are
written as one atomic replacement of the directory, and read only after their sizes,
shapes and values are checked against each other and against the model. No pickle is
involved at any point.

:func:`save_pretrained` saves a whole adapted ``transformers`` model: the base model as
``from_pretrained`` reads it, and each adapter beside it in this format, in
``<directory>/cp_adapters/<name>/``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from cptensor.errors import CPTensorError, CPTensorTypeError
from cptensor.files import SafetensorsFile, read_regular_file, replaced_directory

from .config import AdapterConfig
from .grid import WeightGrid
from .layout import plan_groups
from .model import (
    adapter_names,
    attach,
    check_name,
    find_store,
    grid_for,
    merged_adapters,
    require_adapter,
    update_requires_grad,
)
from .modules import STORE_ATTR, iter_adapter_layers, iter_save_wrappers
from .sharding import (
    copy_into,
    distributed,
    gathered,
    on_writer,
    reject_fsdp1,
    sharded_model,
)

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "FORMAT",
    "PRETRAINED_ADAPTERS",
    "SavedAdapter",
    "load_adapter",
    "load_adapter_weights",
    "read_adapter_config",
    "read_saved_adapter",
    "save_adapter",
    "save_pretrained",
]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "cptensor_adapters"
FORMAT_VERSION = 1
#: Subdirectory of a :func:`save_pretrained` directory that holds the adapters, one
#: subdirectory per adapter name (not the model directory itself: ``from_pretrained`` takes
#: an ``adapter_config.json`` beside ``config.json`` for a PEFT adapter).
PRETRAINED_ADAPTERS = "cp_adapters"


def write_adapter_directory(
    path: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    metadata: dict[str, str] | None = None,
    *,
    collective: bool = True,
) -> Path:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` into the directory
    ``path`` as one atomic replacement (:func:`~cptensor.files.replaced_directory`):
    after a crash at any instant the directory holds the old adapter or the new one.
    Under ``torch.distributed`` rank 0 writes; with ``collective=True`` (a sharded model)
    every rank returns once it is written, otherwise the other ranks return at once
    (:func:`~cptensor_adapters.sharding.on_writer`)."""
    out = Path(path)

    def write() -> None:
        with replaced_directory(out) as tmp:
            save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata=metadata)
            (tmp / ADAPTER_CONFIG).write_bytes(json.dumps(config, indent=2).encode())

    on_writer(write, collective=collective)  # under torch.distributed: rank 0 writes
    return out


def _adapter_parameters(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The tensors of adapter ``name`` under their keys in ``adapter_model.safetensors``:
    the shared factors (``groups.<i>.<mode>``) and the ``modules_to_save`` copies
    (``modules_to_save.<module path>.<parameter>``), the model's own, not copies."""
    adapter = require_adapter(model, name)
    tensors: dict[str, torch.Tensor] = {}
    for i, g in enumerate(adapter.groups):
        for mode, p in g.factors.items():
            tensors[f"groups.{i}.{mode}"] = p
    for path, w in iter_save_wrappers(model):
        if name in w.modules_to_save:
            for pn, p in w.modules_to_save[name].state_dict(keep_vars=True).items():
                tensors[f"modules_to_save.{path}.{pn}"] = p
    return tensors


def _adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """What :func:`save_adapter` writes: :func:`_adapter_parameters`, detached, on the CPU
    (whole tensors on every rank of a model sharded with FSDP2)."""
    params = _adapter_parameters(model, name)
    with gathered(model, params.values()):
        # fetched again: unsharding puts whole parameters in place of the sharded ones
        return {
            k: p.detach().contiguous().cpu().clone()
            for k, p in _adapter_parameters(model, name).items()
        }


def save_adapter(model: nn.Module, path: str | os.PathLike[str], name: str = "default") -> Path:
    """Write adapter ``name`` to the directory ``path`` (created if needed).

    Writes ``adapter_model.safetensors`` (shared factors stored once, ``modules_to_save``
    copies) and ``adapter_config.json`` (config, name, weight grid) as one atomic
    replacement of the directory: a crash at any instant leaves the previous adapter or
    the new one, never the weights of one with the config of the other. Other files in the
    directory are kept.

    Returns
    -------
    Path
        The directory, as a ``Path``.

    Raises
    ------
    KeyError
        no adapter ``name``.

    Examples
    --------
    >>> import tempfile
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...                                 num_attention_heads=4, intermediate_size=64)))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     sorted(p.name for p in save_adapter(m, d).iterdir())
    ['adapter_config.json', 'adapter_model.safetensors']
    """
    adapter = require_adapter(model, name)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "config": adapter.config.to_dict(),
        "grid": adapter.grid.to_dict(),
        "groups": [p.to_dict() for p in adapter.plans],
    }
    return write_adapter_directory(
        path,
        _adapter_tensors(model, name),
        meta,
        metadata={"format": FORMAT},
        collective=sharded_model(model),
    )


def save_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    merged: bool = False,
    **kwargs: Any,
) -> Path:
    """Save an adapted ``transformers`` model so that ``from_pretrained`` reloads the base
    model intact, with the adapters beside it; or, with ``merged=True``, the merged model.

    :func:`~cptensor_adapters.attach` makes this the model's own ``save_pretrained``, so
    ``model.save_pretrained(path)`` does it (``transformers``' own method would write the
    wrapped weights under names ``from_pretrained`` does not know, and reload them at
    random). Written to the directory ``path``:

    - ``merged=False`` (the default): ``transformers``' ``save_pretrained`` files holding
      the base model only, every weight under its original name and bit for bit as it is
      (``modules_to_save`` originals, not their trained copies), and every adapter as
      :func:`save_adapter` writes it, in ``path/cp_adapters/<name>/`` (adapters of earlier
      saves that the model no longer has are removed from there). Reload with
      ``Model.from_pretrained(path)`` and ``load_adapter(model, path / "cp_adapters" /
      "default")``.
    - ``merged=True``: the model as it computes now, as one plain model: the active
      adapters' updates added into the weights as :func:`~cptensor_adapters.merge` adds
      them, the active ``modules_to_save`` copies in place of the originals, and no adapter
      (the ``cp_adapters`` directory of an earlier save is removed). The model itself is
      not changed.

    Parameters
    ----------
    model : torch.nn.Module
        a ``transformers`` model (adapted or not; a plain one is saved as ``transformers``
        saves it).
    path : str or os.PathLike
        the directory (created if needed).
    merged : bool
        save the merged model instead of the base model and its adapters.
    **kwargs : Any
        passed to ``transformers``' ``save_pretrained`` (``max_shard_size``,
        ``is_main_process``, ...); a ``state_dict`` given here is saved in place of the
        model's (adapter keys dropped, base keys under their original names).

    Returns
    -------
    Path
        The directory.

    Raises
    ------
    TypeError
        ``model`` has no ``save_pretrained`` (not a ``transformers`` model: use
        :func:`save_adapter`, or ``torch.save(model.state_dict())``).
    ValueError
        ``merged=False`` while adapters are merged into the weights (the base model is not
        in the model then: :func:`~cptensor_adapters.unmerge` first, or save with
        ``merged=True``); ``merged=True`` with a ``state_dict``, or with updates to add into
        weights sharded with FSDP2 (merge them with :func:`~cptensor_adapters.merge` first).

    Examples
    --------
    >>> import copy, tempfile, torch
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach, load_adapter
    >>> base = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...                             intermediate_size=64), add_pooling_layer=False).eval()
    >>> model = attach(copy.deepcopy(base), AdapterConfig(init="random", alpha=64))
    >>> ids = torch.tensor([[3, 4, 5]])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = model.save_pretrained(d)        # this function
    ...     again = BertModel.from_pretrained(d, add_pooling_layer=False).eval()
    ...     same_base = torch.equal(again(ids).last_hidden_state, base(ids).last_hidden_state)
    ...     adapted = load_adapter(again, Path(d) / "cp_adapters" / "default")
    ...     close = torch.allclose(adapted(ids).last_hidden_state, model(ids).last_hidden_state)
    >>> same_base, close
    (True, True)
    """
    if not isinstance(model, nn.Module):
        raise CPTensorTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    hf_save = getattr(type(model), "save_pretrained", None)
    if not callable(hf_save):
        raise CPTensorTypeError(
            f"model: {type(model).__name__} has no save_pretrained (not a transformers model); "
            "save its adapters with save_adapter(model, path), or torch.save(model.state_dict())"
        )
    if not isinstance(merged, bool):
        raise CPTensorTypeError(f"merged: expected True or False, got {merged!r}")
    out = Path(path)
    if find_store(model) is None:  # a plain model: nothing of ours to separate
        hf_save(model, str(out), **kwargs)
        return out
    given = kwargs.pop("state_dict", None)
    if merged:
        if given is not None:
            raise CPTensorError(
                "state_dict: cannot be combined with merged=True (the merged weights are "
                "computed from the model)"
            )
        state = _merged_state_dict(model)
    else:
        names = merged_adapters(model)
        if names:
            raise CPTensorError(
                f"model: adapters {list(names)} are merged into the base weights, so the base "
                "model is not there to save; unmerge(model) first to save the base model with "
                "the adapters beside it, or save_pretrained(path, merged=True) to save the "
                "merged model"
            )
        state = model.state_dict() if given is None else dict(given)
    state = _base_model_keys(model, state)
    hf_save(model, str(out), state_dict=state, **kwargs)
    keep = () if merged else adapter_names(model)
    writes = distributed() or bool(kwargs.get("is_main_process", True))
    if writes:
        on_writer(
            lambda: _remove_stale_adapters(out / PRETRAINED_ADAPTERS, keep),
            collective=sharded_model(model),
        )
        for name in keep:  # rank 0 writes (collective only on a sharded model)
            save_adapter(model, out / PRETRAINED_ADAPTERS / name, name)
    return out


def _base_model_keys(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` as the plain model's state dict: no adapter tensors (``cp_adapters.*``,
    ``modules_to_save`` copies), and a wrapped module's tensors under its own name (the
    wrappers' state-dict hooks already spell them so; a state dict made otherwise may not)."""
    drop = [STORE_ATTR + "."]
    renames: list[tuple[str, str]] = []
    for path, _ in iter_adapter_layers(model):
        renames.append((f"{path}.base_layer.", f"{path}."))
    for path, _ in iter_save_wrappers(model):
        drop.append(f"{path}.modules_to_save.")
        renames.append((f"{path}.original_module.", f"{path}."))
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(tuple(drop)):
            continue
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


@torch.no_grad()
def _merged_state_dict(model: nn.Module) -> dict[str, Any]:
    """The state dict of what ``model`` computes now, as one plain model (see
    :func:`save_pretrained`); the model is not changed."""
    state = model.state_dict()
    for path, layer in iter_adapter_layers(model):
        weight = layer.merged_weight()
        if weight is not None:
            state[f"{path}.weight"] = weight
    for path, wrapper in iter_save_wrappers(model):
        active = wrapper.active_module()
        if active is not wrapper.original_module:
            for key, value in active.state_dict().items():
                state[f"{path}.{key}"] = value
    return state


def _remove_stale_adapters(root: Path, keep: tuple[str, ...]) -> None:
    """Remove from ``root`` the adapter directories (this library's format only) not named
    in ``keep``, then ``root`` itself if that leaves it empty: a reload must not find the
    adapters of an earlier save beside the new weights."""
    if not root.is_dir():
        return
    for sub in root.iterdir():
        if sub.name in keep or not sub.is_dir() or sub.is_symlink():
            continue
        try:
            read_adapter_config(sub)
        except (OSError, ValueError):
            continue  # not ours: left alone
        shutil.rmtree(sub)
    if not any(root.iterdir()):
        root.rmdir()


def _field(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], file: Path) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind):
        raise CPTensorError(
            f"path: {file}: field {key!r} is missing or not a "
            f"{getattr(kind, '__name__', kind)} (got {type(value).__name__})"
        )
    return value


def read_adapter_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``adapter_config.json`` of a saved adapter, its fields checked for type.

    Only a regular file of at most 64 MiB is read (a FIFO or a device never blocks it).

    Raises
    ------
    FileNotFoundError
        no such file.
    ValueError
        not a file written by :func:`save_adapter`, or not valid UTF-8 JSON
        of the expected structure (the message names the file and the field).
    """
    file = Path(path) / ADAPTER_CONFIG
    raw = read_regular_file(file, "path")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CPTensorError(
            f"path: {file} is not valid JSON ({type(exc).__name__}; UTF-8 JSON expected)"
        ) from None
    if not isinstance(meta, dict):
        raise CPTensorError(f"path: {file} holds a JSON {type(meta).__name__}, expected an object")
    if meta.get("format") != FORMAT:
        raise CPTensorError(
            f"path: {file} is not a cptensor_adapters adapter (format={meta.get('format')!r}, "
            f"expected {FORMAT!r}); a PEFT LoRA directory loads with peft.PeftModel"
        )
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CPTensorError(f"path: {file}: format_version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise CPTensorError(
            f"path: {file} has format_version {version}, this library reads up to {FORMAT_VERSION}"
        )
    _field(meta, "name", str, file)
    _field(meta, "config", dict, file)
    grid = _field(meta, "grid", dict, file)
    _field(grid, "targets", list, file)
    return meta


def saved_config_and_grid(meta: dict[str, Any], file: Path) -> tuple[AdapterConfig, WeightGrid]:
    """The config and grid of a saved adapter, built from their JSON with every error turned
    into a ``ValueError`` that names the file."""
    try:
        config = AdapterConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CPTensorError(f"path: {file}: bad config ({exc})") from None
    try:
        grid = WeightGrid.from_dict(meta["grid"])
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CPTensorError(f"path: {file}: bad grid ({type(exc).__name__}: {exc})") from None
    return config, grid


def _header(file: Path) -> tuple[SafetensorsFile, dict[str, tuple[tuple[int, ...], str]]]:
    """The validating reader of ``file`` and ``{key: (shape, dtype)}`` from its header; no
    tensor is read."""
    if not file.is_file():
        raise CPTensorError(f"path: {file} is missing or not a regular file")
    try:
        reader = SafetensorsFile(file)
    except CPTensorError as exc:
        raise CPTensorError(f"path: {exc}") from None
    return reader, {k: (reader.shape(k), reader.dtype(k)) for k in reader.keys()}


_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def _check_keys(expected: set[str], found: set[str], file: Path) -> None:
    """The tensors ``found`` in ``file`` are exactly those its config implies."""
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing:
        raise CPTensorError(
            f"path: {file} does not match its config: tensor {missing[0]!r} is missing "
            f"({len(missing)} missing in all)"
        )
    if extra:
        raise CPTensorError(
            f"path: {file} holds unexpected tensors {extra[:5]} (not in its config)"
        )


def _check_factors(
    header: dict[str, tuple[tuple[int, ...], str]],
    plans: list[Any],
    r: int,
    file: Path,
) -> None:
    """Every CP factor the config implies is in the file with shape ``(size, r)`` and a
    floating dtype, and the file has no other factor: checked before anything is allocated."""
    expected = {
        f"groups.{p.index}.{mode}": (size, r) for p in plans for mode, size in zip(p.modes, p.shape)
    }
    _check_keys(set(expected), {k for k in header if k.startswith("groups.")}, file)
    for key, shape in expected.items():
        got, dtype = header[key]
        if got != shape:
            raise CPTensorError(
                f"path: tensor {key!r} in {file} has shape {got}, the config and the model "
                f"imply {shape}"
            )
    for key, (_, dtype) in header.items():
        if dtype not in _FLOAT_DTYPES:
            raise CPTensorError(
                f"path: tensor {key!r} in {file} has dtype {dtype}; expected a floating type"
            )


@dataclass(frozen=True)
class SavedAdapter:
    """A directory written by :func:`save_adapter`, read and checked as a whole.

    Attributes
    ----------
    directory : Path
        where it was read from.
    meta : dict of str to Any
        the parsed ``adapter_config.json``.
    config : AdapterConfig
        its :class:`~cptensor_adapters.AdapterConfig`.
    grid : WeightGrid
        the :class:`~cptensor_adapters.WeightGrid` it was saved from.
    plans : list of GroupPlan
        the CP tensors (:class:`~cptensor_adapters.GroupPlan`) that config and
        grid define (checked against the file's own ``groups`` record).
    factors : list of dict of str to torch.Tensor
        per plan, ``{mode: tensor (size × r)}``, finite and floating,
        memory-mapped.
    others : dict of str to torch.Tensor
        the other tensors of the weights file (the ``modules_to_save`` copies,
        ``modules_to_save.<module path>.<parameter>``), memory-mapped.

    Examples
    --------
    >>> import tempfile
    >>> from transformers import GPT2Config, GPT2Model
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4)), AdapterConfig(r=3))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     saved = read_saved_adapter(save_adapter(m, d))
    >>> saved.config.r, [p.shape for p in saved.plans], saved.others
    (3, [(32, 8, 4, 2, 4)], {})
    """

    directory: Path
    meta: dict[str, Any]
    config: AdapterConfig
    grid: WeightGrid
    plans: list[Any]
    factors: list[dict[str, torch.Tensor]]
    others: dict[str, torch.Tensor]


def read_saved_adapter(path: str | os.PathLike[str]) -> SavedAdapter:
    """Read and check a directory written by :func:`save_adapter` without a model: the
    config file (bounded, typed), the grid and CP tensors it defines, the ``groups``
    record, and every factor's presence, shape, dtype and values. The one reader of this
    library's adapter format (:func:`load_adapter` and the delta analysis use it).

    Raises
    ------
    FileNotFoundError
        a missing file.
    CPTensorError
        anything malformed or inconsistent, naming the file.

    Examples
    --------
    >>> import tempfile
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...            num_attention_heads=4, intermediate_size=64)), AdapterConfig(r=2))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     saved = read_saved_adapter(save_adapter(m, d))
    ...     sorted(saved.factors[0]), tuple(saved.factors[0]["out"].shape)
    (['head', 'in', 'layer', 'matrix', 'out'], (32, 2))
    """
    directory = Path(path)
    meta = read_adapter_config(directory)
    config_file = directory / ADAPTER_CONFIG
    config, grid = saved_config_and_grid(meta, config_file)
    try:
        plans = plan_groups(grid, config.resolved_layout, config.head_split)
    except (ValueError, TypeError) as exc:
        raise CPTensorError(f"path: {config_file}: {exc}") from None
    saved = meta.get("groups")
    if saved is not None:
        want = [(list(p.modes), list(p.shape), [m.target for m in p.members]) for p in plans]
        try:
            got = [(list(g["modes"]), list(g["shape"]), list(g["targets"])) for g in saved]
        except (KeyError, TypeError) as exc:
            raise CPTensorError(
                f"path: {config_file}: malformed 'groups' entry ({exc!r})"
            ) from None
        if got != want:
            raise CPTensorError(
                f"path: {config_file}: its 'groups' disagree with the CP tensors its config "
                "and grid define (an edited file, or one written by another version)"
            )
    weights = directory / ADAPTER_WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"path: {directory} lacks {ADAPTER_WEIGHTS}")
    reader, header = _header(weights)
    _check_factors(header, plans, config.r, weights)
    factors = []
    for p in plans:
        fs = {}
        for mode in p.modes:
            key = f"groups.{p.index}.{mode}"
            t = reader.read(key, "pt")
            if not bool(torch.isfinite(t).all()):
                raise CPTensorError(
                    f"path: tensor {key!r} in {weights} holds NaN or infinite values"
                )
            fs[mode] = t
        factors.append(fs)
    others = {k: reader.read(k, "pt") for k in reader.keys() if not k.startswith("groups.")}
    return SavedAdapter(directory, meta, config, grid, plans, factors, others)


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike[str],
    name: str | None = None,
    trainable: bool = False,
) -> nn.Module:
    """Attach the adapter saved in ``path`` to ``model`` and return the model.

    The model's weight grid (found with the saved config's targets) must match the grid the
    adapter was saved from. The loaded adapter becomes active if no adapter is; its factors
    train only with ``trainable=True``.

    Nothing from the files is trusted before it is checked: the config is read only from a
    regular file of bounded size, a ``targets`` regular expression in it is never compiled
    (the saved grid's module paths select the targets), and the shape and dtype of every
    tensor are checked against the config and the model before any memory is allocated;
    non-finite values are refused.

    Parameters
    ----------
    model : torch.nn.Module
        a plain or already adapted model.
    path : str or os.PathLike
        directory written by :func:`save_adapter`.
    name : str, optional
        name to give the adapter (default: the saved name).
    trainable : bool
        whether its factors (and ``modules_to_save`` copies) train.

    Raises
    ------
    ValueError
        the model's geometry differs from the file's (the message lists what
        differs), the name is taken, or the files are malformed or inconsistent (the
        message names the file).

    Examples
    --------
    >>> import copy, tempfile, torch
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> base = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...                             num_attention_heads=4, intermediate_size=64)).eval()
    >>> a = attach(copy.deepcopy(base), AdapterConfig(init="random", alpha=64))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     b = load_adapter(base, save_adapter(a, d))
    >>> ids = torch.tensor([[3, 4, 5]])
    >>> torch.allclose(a(ids).last_hidden_state, b(ids).last_hidden_state)
    True
    """
    reject_fsdp1(model)  # before the geometry check, which would blame the file
    saved = read_saved_adapter(path)
    directory, config, saved_grid = saved.directory, saved.config, saved.grid
    name = check_name(saved.meta["name"] if name is None else name)
    store = find_store(model)
    if store is not None and name in store.adapters:
        raise CPTensorError(
            f"name: the model already has an adapter {name!r}; pass name= to load under another"
        )
    # The saved grid names the modules: a regular expression from the file is never run.
    selection = config if not isinstance(config.targets, str) else None
    if selection is None:
        selection = config.replace(targets=list(saved_grid.modules) or None)
    try:
        grid = grid_for(model, selection)
    except ValueError as exc:
        raise CPTensorError(
            f"model: cannot map the adapter in {directory} onto this model ({exc})"
        ) from None
    diffs = saved_grid.differences(grid, labels=("file", "model"))
    if diffs:
        raise CPTensorError(
            f"model: the adapter in {directory} was saved for a model of other geometry: "
            + "; ".join(diffs[:8])
            + (f"; ... ({len(diffs) - 8} more)" if len(diffs) > 8 else "")
        )
    tensors = dict(saved.others)
    for p, fs in zip(saved.plans, saved.factors):
        tensors.update({f"groups.{p.index}.{mode}": t for mode, t in fs.items()})
    attach(model, selection, name)
    try:
        _copy_into(model, name, tensors, directory)
    except Exception:
        from .model import remove_adapter

        remove_adapter(model, name)
        raise
    adapter = require_adapter(model, name)
    adapter.config = config
    adapter.trainable = bool(trainable)
    store = find_store(model)
    assert store is not None
    update_requires_grad(model, store)
    return model


def load_adapter_weights(
    model: nn.Module, path: str | os.PathLike[str], name: str | None = None
) -> nn.Module:
    """Copy the factors (and ``modules_to_save`` copies) saved in ``path`` into the
    adapter ``name`` the model already has, of the same configuration and grid.

    This is how an adapter is loaded into a model sharded with FSDP2, whose parameters
    must exist before ``fully_shard``: attach the adapter (its config is
    ``read_saved_adapter(path).config``), shard, then load its weights; each rank writes
    its own shard. On a plain model it is :func:`load_adapter` for an adapter already attached
    (what PEFT's ``set_peft_model_state_dict`` does). Every tensor is checked before any
    is copied, as in :func:`load_adapter`.

    Parameters
    ----------
    model : torch.nn.Module
        a model with adapter ``name``.
    path : str or os.PathLike
        directory written by :func:`save_adapter`.
    name : str, optional
        the adapter to load into (default: the saved name).

    Returns
    -------
    torch.nn.Module
        ``model``.

    Raises
    ------
    CPTensorError
        no such adapter, an adapter of another rank, layout, head split, factor dtype or
        grid, or malformed files (the message names the file).

    Examples
    --------
    >>> import tempfile, torch
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, as_cp, attach
    >>> cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
    ...                  intermediate_size=64)
    >>> a = attach(BertModel(cfg), AdapterConfig(r=2, init="random", seed=1))
    >>> b = attach(BertModel(cfg), AdapterConfig(r=2, init="random", seed=2))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = load_adapter_weights(b, save_adapter(a, d))
    >>> bool(torch.equal(as_cp(a).factors[0], as_cp(b).factors[0]))
    True
    """
    saved = read_saved_adapter(path)
    name = check_name(saved.meta["name"] if name is None else name)
    adapter = require_adapter(model, name)
    mine, theirs = adapter.config, saved.config
    diffs = [
        f"{field}: file {getattr(theirs, field)!r}, model {getattr(mine, field)!r}"
        for field in ("r", "layout", "head_split", "factor_dtype", "modules_to_save")
        if getattr(theirs, field) != getattr(mine, field)
    ]
    diffs += saved.grid.differences(adapter.grid, labels=("file", "model"))
    if diffs:
        raise CPTensorError(
            f"model: adapter {name!r} differs from the one in {saved.directory}: "
            + "; ".join(diffs[:8])
        )
    tensors = dict(saved.others)
    for p, fs in zip(saved.plans, saved.factors):
        tensors.update({f"groups.{p.index}.{mode}": t for mode, t in fs.items()})
    _copy_into(model, name, tensors, saved.directory)
    return model


@torch.no_grad()
def _copy_into(model: nn.Module, name: str, tensors: dict[str, torch.Tensor], where: Path) -> None:
    expected = _adapter_parameters(model, name)
    file = where / ADAPTER_WEIGHTS
    _check_keys(set(expected), set(tensors), file)
    for key, p in expected.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(p.shape):
            raise CPTensorError(
                f"path: tensor {key!r} in {file} has shape {tuple(t.shape)}, "
                f"the model expects {tuple(p.shape)}"
            )
        if not bool(torch.isfinite(t).all()):
            raise CPTensorError(f"path: tensor {key!r} in {file} holds NaN or infinite values")
    for key, p in expected.items():
        # explicit I/O: the file's CPU tensor goes to the parameter's device and dtype (each
        # rank's own shard of a parameter sharded with FSDP2)
        copy_into(p, tensors[key])
