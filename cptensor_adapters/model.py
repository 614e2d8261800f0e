"""Attaching adapters to a model, and everything done with them afterwards.

All functions act on the model in place and return it (or what they compute); the
adapters live in the model (a :class:`~cptensor_adapters.modules.FactorStore` at
``model.cp_adapters`` and :class:`~cptensor_adapters.modules.CPAdapterLayer` wrappers), so
an adapted model is an ordinary ``torch.nn.Module``: it trains with any loop, the Hugging
Face ``Trainer``, ``DistributedDataParallel`` and ``torch.compile``.

Two PEFT habits work on the adapted model itself: :func:`attach` gives it a
``print_trainable_parameters()`` method (:func:`print_trainable_parameters`) and, for a
``transformers`` model, a ``save_pretrained`` that writes the base model under its
original names with the adapters beside it
(:func:`~cptensor_adapters.io.save_pretrained`); both go away when the model is plain again
(:func:`merge_and_unload`, or :func:`remove_adapter` of the last adapter).
"""

from __future__ import annotations

import re
import sys
import types
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from torch import nn

from cptensor.errors import CPTensorError, CPTensorKeyError, CPTensorTypeError

from .config import AdapterConfig
from .grid import WeightGrid, iter_weight_modules, suffix_match
from .layout import GroupPlan, lora_equivalent_parameters, plan_groups
from .modules import (
    STORE_ATTR,
    AdapterFactors,
    CPAdapterLayer,
    FactorStore,
    ModulesToSaveWrapper,
    iter_adapter_layers,
    iter_save_wrappers,
    remove_scopes,
    scope_of,
)
from .sharding import gathered, reject_fsdp1

__all__ = [
    "ParameterReport",
    "active_adapters",
    "adapter_groups",
    "adapter_names",
    "as_cp",
    "attach",
    "delta_weights",
    "disabled",
    "get_config",
    "merge",
    "merge_and_unload",
    "merged_adapters",
    "parameter_report",
    "print_trainable_parameters",
    "remove_adapter",
    "set_active",
    "unmerge",
]

_NAME = re.compile(r"[A-Za-z0-9_\-]+")


def check_name(name: Any) -> str:
    """``name`` if it is a valid adapter name; CPTensorError saying what is allowed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CPTensorError(
            f"name: expected a non-empty string of letters, digits, '_' or '-', got {name!r}"
        )
    return name


def find_store(model: nn.Module) -> FactorStore | None:
    """The factor store of ``model``, or ``None`` when it has no adapter."""
    store = model._modules.get(STORE_ATTR)
    return store if isinstance(store, FactorStore) else None


def require_store(model: nn.Module) -> FactorStore:
    """The factor store of an adapted ``model``; CPTensorError when it has none."""
    if not isinstance(model, nn.Module):
        raise CPTensorTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    store = find_store(model)
    if store is None:
        raise CPTensorError(
            f"model: {type(model).__name__} has no adapters (attach one with attach(model, config))"
        )
    return store


def require_adapter(model: nn.Module, name: str) -> AdapterFactors:
    """Adapter ``name`` of ``model``; CPTensorKeyError naming the adapters it has."""
    store = require_store(model)
    if name not in store.adapters:
        raise CPTensorKeyError(f"name: no adapter {name!r}; the model has {list(store.adapters)}")
    return store.adapters[name]  # type: ignore[return-value]


def _set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, new)


def grid_for(model: nn.Module, config: AdapterConfig) -> WeightGrid:
    """The weight grid of ``model`` that ``config`` targets (its targets, roles and head
    geometry)."""
    return WeightGrid.from_model(
        model,
        config.targets,
        roles=config.roles,
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
    )


def update_requires_grad(model: nn.Module, store: FactorStore) -> None:
    """Make the active adapters' factors and ``modules_to_save`` copies trainable, the
    rest frozen."""
    store.set_trainable()
    for _, w in iter_save_wrappers(model):
        for name, mod in w.modules_to_save.items():
            flag = name in store.active and store.adapters[name].trainable
            for p in mod.parameters():
                p.requires_grad_(flag)


def attach(
    model: nn.Module, config: AdapterConfig | None = None, name: str = "default"
) -> nn.Module:
    """Attach a CP-factored adapter to ``model`` (in place) and return the model.

    The targets are wrapped by :class:`~cptensor_adapters.modules.CPAdapterLayer`; the
    factors are created once in ``model.cp_adapters`` on the device of the target weights,
    in ``config.factor_dtype``; every other parameter of the model is frozen, except the
    copies of ``modules_to_save``. The first adapter attached becomes active; later ones
    stay inactive until :func:`set_active` (as in PEFT).

    Parameters
    ----------
    model : torch.nn.Module
        the model (e.g. a ``transformers`` model).
    config : AdapterConfig, optional
        the :class:`AdapterConfig` (default ``AdapterConfig()``: LoRTA, r = 8).
    name : str
        the adapter's name.

    Returns
    -------
    torch.nn.Module
        ``model``.

    Raises
    ------
    ValueError
        a bad name, a name already used, targets that match nothing or weights
        spread over several devices (the message says which).

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach, parameter_report
    >>> model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...                              num_attention_heads=4, intermediate_size=64))
    >>> model = attach(model, AdapterConfig(r=4))
    >>> parameter_report(model)["default"].factor_parameters  # 4·(32 + 8 + 4 + 2 + 4)
    200
    >>> sum(p.numel() for p in model.parameters() if p.requires_grad)
    200
    """
    if not isinstance(model, nn.Module):
        raise CPTensorTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    config = AdapterConfig() if config is None else config
    if not isinstance(config, AdapterConfig):
        raise CPTensorTypeError(f"config: expected an AdapterConfig, got {type(config).__name__}")
    check_name(name)
    reject_fsdp1(model)  # FSDP1 flattens the weights the adapter would wrap
    store = find_store(model)
    if store is not None and name in store.adapters:
        raise CPTensorError(
            f"name: the model already has an adapter {name!r}; pick another name or "
            "remove_adapter(model, name) first"
        )
    grid = grid_for(model, config)
    plans = plan_groups(grid, config.resolved_layout, config.head_split)
    modules = dict(iter_weight_modules(model))
    weights = [modules[m].weight for m in grid.modules]
    devices = sorted({str(w.device) for w in weights})
    if len(devices) > 1:
        raise CPTensorError(
            f"model: the targets' weights are on several devices {devices}; one adapter's shared "
            "factors need one device (move the model with model.to(device) first)"
        )
    dtypes = sorted({str(w.dtype) for w in weights})
    if len(dtypes) > 1 and config.factor_dtype is None:
        raise CPTensorError(
            f"config.factor_dtype: the targets' weights have several dtypes {dtypes}; set "
            "factor_dtype explicitly"
        )
    save_paths = _modules_to_save_paths(model, config.modules_to_save or [], set(grid.modules))

    if store is None:
        store = FactorStore().train(model.training)
        store.original_requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        setattr(model, STORE_ATTR, store)
    adapter = AdapterFactors(
        config, grid, plans, config.dtype_for(weights[0].dtype), weights[0].device
    )
    adapter.initialise()
    store.adapters[name] = adapter.train(store.training)

    all_modules = dict(model.named_modules())
    for path in grid.modules:
        layer = all_modules[path]
        if not isinstance(layer, CPAdapterLayer):
            layer = CPAdapterLayer(layer, store, path).train(layer.training)
            _set_submodule(model, path, layer)
            parent_path = path.rpartition(".")[0]
            layer._scope = scope_of(model.get_submodule(parent_path) if parent_path else model)
        layer.add_adapter(name, list(grid.targets_of(path)), plans)
    for path in save_paths:
        wrapper = all_modules[path]
        if not isinstance(wrapper, ModulesToSaveWrapper):
            wrapper = ModulesToSaveWrapper(wrapper, store, path).train(wrapper.training)
            _set_submodule(model, path, wrapper)
        wrapper.add_adapter(name)

    for n, p in model.named_parameters():
        if not n.startswith(STORE_ATTR + "."):
            p.requires_grad_(False)
    if not store.active:
        store.active = (name,)
    update_requires_grad(model, store)
    _install_methods(model)
    return model


def _save_pretrained_method(
    self: nn.Module, save_directory: Any, *, merged: bool = False, **kwargs: Any
) -> Any:
    """``model.save_pretrained`` of an adapted ``transformers`` model: see
    :func:`cptensor_adapters.io.save_pretrained`."""
    from .io import save_pretrained

    return save_pretrained(self, save_directory, merged=merged, **kwargs)


def _methods() -> dict[str, Any]:
    """The PEFT habits given to the adapted model object itself: instance attributes, so
    its class and every other instance stay untouched (and ``copy.deepcopy`` rebinds them
    to the copy); removed when the model is plain again."""
    return {
        "print_trainable_parameters": print_trainable_parameters,
        "save_pretrained": _save_pretrained_method,
    }


def _install_methods(model: nn.Module) -> None:
    for attr, fn in _methods().items():
        if attr in model.__dict__:
            continue
        if attr == "save_pretrained":
            if not callable(getattr(type(model), "save_pretrained", None)):
                continue  # not a transformers model: nothing to make safe
        elif hasattr(type(model), attr):
            continue  # the class has its own (a PeftModel): leave it
        model.__dict__[attr] = types.MethodType(fn, model)


def _remove_methods(model: nn.Module) -> None:
    for attr, fn in _methods().items():
        if getattr(model.__dict__.get(attr), "__func__", None) is fn:
            del model.__dict__[attr]


def _modules_to_save_paths(model: nn.Module, keys: Sequence[str], targets: set[str]) -> list[str]:
    if not keys:
        return []
    paths: list[str] = []
    skip: list[str] = []
    unmatched = []
    candidates = []
    for path, m in model.named_modules():
        if not path or any(path.startswith(s + ".") for s in skip):
            continue
        if isinstance(m, (FactorStore, ModulesToSaveWrapper, CPAdapterLayer)):
            skip.append(path)
        if isinstance(m, FactorStore):
            continue
        candidates.append(path)
    for key in keys:
        hits = [p for p in candidates if suffix_match(p, key)]
        if not hits:
            unmatched.append(key)
        for p in hits:
            if p in targets or any(t.startswith(p + ".") for t in targets):
                raise CPTensorError(
                    f"modules_to_save: {key!r} matches {p!r}, which contains adapter targets; "
                    "a module is either adapted or saved in full, not both"
                )
            if p not in paths:
                paths.append(p)
    if unmatched:
        raise CPTensorError(
            f"modules_to_save: {unmatched!r} match no module (names match a module path exactly "
            f"or as a dotted suffix); top-level modules: {[n for n, _ in model.named_children()]}"
        )
    _check_untied(model, paths)
    return paths


def _check_untied(model: nn.Module, paths: list[str]) -> None:
    """A module saved in full must not share a parameter with another module (GPT-2's
    ``wte`` and ``lm_head``): its trainable copy would leave the other one behind, and
    copies of both would silently untie them."""
    owners: dict[int, list[str]] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        for _, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(path)
    for path in paths:
        for _, p in model.get_submodule(path).named_parameters():
            mine = (path, path + ".")
            others = [o for o in owners.get(id(p), []) if o != path and not o.startswith(mine[1])]
            if others:
                raise CPTensorError(
                    f"modules_to_save: {path!r} shares its weights with {others[0]!r} (tied "
                    "embeddings); a trainable copy would untie them. Untie them first (e.g. "
                    "clone the output layer's weight and set config.tie_word_embeddings=False)"
                )


def adapter_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the adapters attached to ``model`` (empty if none).

    Examples
    --------
    >>> adapter_names(torch.nn.Linear(2, 2))
    ()
    """
    store = find_store(model)
    return tuple(store.adapters) if store is not None else ()


def active_adapters(model: nn.Module) -> tuple[str, ...]:
    """Names of the active adapters (their updates are summed in the forward pass).

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...                                 num_attention_heads=4, intermediate_size=64)))
    >>> m = attach(m, AdapterConfig(layout="lora"), name="other")
    >>> active_adapters(m), adapter_names(m)
    (('default',), ('default', 'other'))
    """
    store = find_store(model)
    return store.active if store is not None else ()


def get_config(model: nn.Module, name: str = "default") -> AdapterConfig:
    """The :class:`AdapterConfig` of adapter ``name``.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...            num_attention_heads=4, intermediate_size=64)), AdapterConfig(r=2))
    >>> get_config(m).r
    2
    """
    return require_adapter(model, name).config


def adapter_groups(model: nn.Module, name: str = "default") -> tuple[GroupPlan, ...]:
    """The CP tensors of adapter ``name``: modes, shapes, labels and member targets.

    Examples
    --------
    >>> from transformers import GPT2Config, GPT2Model
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(GPT2Model(GPT2Config(n_embd=32, n_layer=2, n_head=4)), AdapterConfig(r=2))
    >>> [(g.modes, g.shape) for g in adapter_groups(m)]
    [(('out', 'in', 'head', 'layer', 'matrix'), (32, 8, 4, 2, 4))]
    """
    return tuple(require_adapter(model, name).plans)


def set_active(model: nn.Module, names: str | Sequence[str]) -> nn.Module:
    """Make ``names`` the active adapters (an empty list deactivates all) and return the model.

    Active adapters' factors (and ``modules_to_save`` copies) train, unless loaded with
    ``trainable=False``; inactive ones are frozen. A merged adapter that is no longer active
    is unmerged first, with a warning (as PEFT's ``set_adapter`` does).

    Raises
    ------
    KeyError
        a name the model does not have.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...                                 num_attention_heads=4, intermediate_size=64)))
    >>> m = set_active(attach(m, AdapterConfig(r=2), name="b"), ["default", "b"])
    >>> active_adapters(m)
    ('default', 'b')
    """
    store = require_store(model)
    if isinstance(names, str):
        names = (names,)
    elif isinstance(names, Sequence) and all(isinstance(n, str) for n in names):
        names = tuple(names)
    else:
        raise CPTensorTypeError(
            f"names: expected an adapter name or a list of names ([] deactivates all), got "
            f"{names!r}"
        )
    missing = [n for n in names if n not in store.adapters]
    if missing:
        raise CPTensorKeyError(
            f"names: no adapter(s) {missing}; the model has {list(store.adapters)}"
        )
    new_active = tuple(dict.fromkeys(names))
    for n in merged_adapters(model):
        if n not in new_active:
            warnings.warn(
                f"set_active: unmerging {n!r} from the base weights, since it is no longer "
                "active (as PEFT's set_adapter does)",
                UserWarning,
                stacklevel=2,
            )
            unmerge(model, n)
    store.active = new_active
    update_requires_grad(model, store)
    return model


def merge(model: nn.Module, name: str | None = None) -> nn.Module:
    """Add the dense update of adapter ``name`` (default: every active adapter) into the
    base weights, so the forward pass costs nothing extra; return the model.

    Examples
    --------
    >>> import torch
    >>> from transformers import GPT2Config, GPT2Model
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4)).eval(),
    ...            AdapterConfig(r=2, init="random", alpha=64))
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> y = m(ids).last_hidden_state
    >>> torch.allclose(merge(m)(ids).last_hidden_state, y, atol=1e-5)
    True
    """
    store = require_store(model)
    if store.disabled:
        raise CPTensorError(
            "model: cannot merge inside disabled(model), where the model must compute what the "
            "base model computes; merge after the with-block"
        )
    names = store.active if name is None else (name,)
    for n in names:
        adapter = require_adapter(model, n)
        # ΔW's factors are read whole (under FSDP2, inside gathered) and added after the
        # units are resharded, so each rank adds into its own shard of the base weights
        todo = []
        factors = [p for g in adapter.groups for p in g.factor_list()]
        with torch.no_grad(), gathered(model, factors):
            for _, layer in iter_adapter_layers(model):
                if n in layer.pieces and n not in layer.merged:
                    A, B = layer.effective_factors(n)
                    todo.append((layer, A.detach().clone(), B.detach().clone()))
        for layer, A, B in todo:
            layer.merge_factors(n, A, B)
    return model


def unmerge(model: nn.Module, name: str | None = None) -> nn.Module:
    """Subtract merged adapters (default: all merged) from the base weights; return the model.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import attach
    >>> m = merge(attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...                                       num_attention_heads=4, intermediate_size=64))))
    >>> merged_adapters(m), merged_adapters(unmerge(m))
    (('default',), ())
    """
    require_store(model)
    if name is not None:
        require_adapter(model, name)
    for _, layer in iter_adapter_layers(model):
        for n in list(reversed(layer.merged)):
            if name is None or n == name:
                layer.unmerge(n)
    return model


def merged_adapters(model: nn.Module) -> tuple[str, ...]:
    """Names of adapters currently merged into some base weight.

    Examples
    --------
    >>> from transformers import GPT2Config, GPT2Model
    >>> from cptensor_adapters import attach
    >>> merged_adapters(attach(GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4))))
    ()
    """
    out: dict[str, None] = {}
    for _, layer in iter_adapter_layers(model):
        out.update(dict.fromkeys(layer.merged))
    return tuple(out)


def _restore_plain(model: nn.Module, store: FactorStore) -> None:
    for path, layer in list(iter_adapter_layers(model)):
        _set_submodule(model, path, layer.base_layer)
    for path, w in list(iter_save_wrappers(model)):
        _set_submodule(model, path, w.active_module())
    delattr(model, STORE_ATTR)
    remove_scopes(model)
    _remove_methods(model)
    for n, p in model.named_parameters():
        if n in store.original_requires_grad:
            p.requires_grad_(store.original_requires_grad[n])


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapters into the base weights and remove every adapter module:
    the model is a plain model again (``modules_to_save`` replaced by the active copy,
    ``requires_grad`` flags as before :func:`attach`). Returns the model.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import attach
    >>> m = merge_and_unload(attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...                      num_attention_heads=4, intermediate_size=64))))
    >>> type(m.encoder.layer[0].attention.self.query).__name__, hasattr(m, "cp_adapters")
    ('Linear', False)
    """
    store = require_store(model)
    if not store.disabled:
        merge(model)
    _restore_plain(model, store)
    return model


@contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager in which ``model`` computes exactly what the base model computes:
    no adapter update, merged adapters taken out for the duration, original
    ``modules_to_save``.

    Examples
    --------
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> base = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...                             num_attention_heads=4, intermediate_size=64)).eval()
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> y0 = base(ids).last_hidden_state
    >>> m = attach(base, AdapterConfig(init="random", alpha=64))
    >>> with disabled(m):
    ...     torch.equal(m(ids).last_hidden_state, y0)
    True
    """
    store = require_store(model)
    layers = [
        (layer, [(n, layer._merged_factors[n]) for n in layer.merged])
        for _, layer in iter_adapter_layers(model)
    ]
    for layer, merged in layers:
        for n, _ in reversed(merged):
            layer.unmerge(n)
    store.disabled += 1
    try:
        yield model
    finally:
        store.disabled -= 1
        for layer, merged in layers:
            for n, (A, B) in merged:  # the same update again; removed adapters stay out
                if n in layer.pieces and n in store.adapters and n not in layer.merged:
                    layer.merge_factors(n, A, B)


def remove_adapter(model: nn.Module, name: str) -> nn.Module:
    """Delete adapter ``name`` (unmerged first if merged); when it was the last one, the
    model becomes plain again. Returns the model.

    Raises
    ------
    KeyError
        no adapter of that name.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,
    ...                                 num_attention_heads=4, intermediate_size=64)))
    >>> m = remove_adapter(m, "default")
    >>> type(m.encoder.layer[0].attention.self.query).__name__, adapter_names(m)
    ('Linear', ())
    """
    store = require_store(model)
    require_adapter(model, name)
    for path, layer in list(iter_adapter_layers(model)):
        layer.remove_adapter(name)
        if not layer.pieces:
            _set_submodule(model, path, layer.base_layer)
    for path, w in list(iter_save_wrappers(model)):
        if name in w.modules_to_save:
            del w.modules_to_save[name]
        if not len(w.modules_to_save):
            _set_submodule(model, path, w.original_module)
    del store.adapters[name]
    store.active = tuple(n for n in store.active if n != name)
    if not len(store.adapters):
        _restore_plain(model, store)
    else:
        update_requires_grad(model, store)
    return model


@dataclass(frozen=True)
class ParameterReport:
    """Parameter counts of one adapter.

    Attributes
    ----------
    name : str
        the adapter.
    layout : str
        the layout's name.
    r : int
        the rank.
    groups : int
        number of CP tensors.
    factor_parameters : int
        entries of its CP factors.
    modules_to_save_parameters : int
        entries of its ``modules_to_save`` copies.
    lora_parameters : int
        what PEFT's LoRA at the same ``r`` on the same modules trains: one pair per
        module, ``Σ r·(in + out)`` (a fused GPT-2 ``c_attn`` is one pair
        ``r·(d + 3d)``, not three).
    formula : str
        the count written out, e.g. ``"8·(384 + 32 + 12 + 6 + 4) = 3504"``.
    trainable : bool
        whether the factors train (active and not loaded frozen).

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...            num_attention_heads=4, intermediate_size=64)), AdapterConfig(r=4))
    >>> rep = parameter_report(m)["default"]
    >>> rep.factor_parameters, rep.lora_parameters, round(rep.ratio_to_lora, 3)
    (200, 2048, 0.098)
    """

    name: str
    layout: str
    r: int
    groups: int
    factor_parameters: int
    modules_to_save_parameters: int
    lora_parameters: int
    formula: str
    trainable: bool

    @property
    def total_parameters(self) -> int:
        """Factors plus ``modules_to_save`` copies."""
        return self.factor_parameters + self.modules_to_save_parameters

    @property
    def ratio_to_lora(self) -> float:
        """``factor_parameters / lora_parameters``."""
        return self.factor_parameters / self.lora_parameters


def parameter_report(model: nn.Module) -> dict[str, ParameterReport]:
    """Trainable parameters per adapter, against LoRA at the same rank on the same targets.

    For the ``"lorta"`` layout on a model without grouped-query attention the count is
    ``r·(d + d_h + H + L + M)`` (MiniLM-L6, r = 8: 3,504; RoBERTa-base, r = 4: 3,440).

    Examples
    --------
    >>> from transformers import RobertaConfig, RobertaModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> with torch.device("meta"):  # RoBERTa-base geometry, no memory used
    ...     m = attach(RobertaModel(RobertaConfig()), AdapterConfig(r=4))
    >>> rep = parameter_report(m)["default"]
    >>> rep.formula, rep.lora_parameters
    ('4·(768 + 64 + 12 + 12 + 4) = 3440', 294912)
    """
    store = find_store(model)
    if store is None:
        return {}
    mts: dict[str, int] = {}
    for _, w in iter_save_wrappers(model):
        for n, mod in w.modules_to_save.items():
            mts[n] = mts.get(n, 0) + sum(p.numel() for p in mod.parameters())
    out = {}
    for name, a in store.adapters.items():
        r = a.config.r
        sizes = Counter(" + ".join(str(s) for s in p.shape) for p in a.plans)
        count = a.num_parameters()
        formula = (
            " + ".join((f"{k}×" if k > 1 else "") + f"{r}·({s})" for s, k in sizes.items())
            + f" = {count}"
        )
        out[name] = ParameterReport(
            name=name,
            layout=a.config.resolved_layout.name,
            r=r,
            groups=len(a.plans),
            factor_parameters=count,
            modules_to_save_parameters=mts.get(name, 0),
            lora_parameters=lora_equivalent_parameters(a.grid, r),
            formula=formula,
            trainable=a.trainable and name in store.active,
        )
    return out


def print_trainable_parameters(model: nn.Module, file: TextIO | None = None) -> None:
    """Print PEFT's one-line summary of ``model``'s parameters (every parameter counted
    once, the adapters' factors and ``modules_to_save`` copies included).

    :func:`attach` also makes it a method of the adapted model, as PEFT users call it:
    ``model.print_trainable_parameters()``.

    Parameters
    ----------
    model : torch.nn.Module
        any model (adapted or not).
    file : text stream, optional
        where to print (default ``sys.stdout``).

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...            num_attention_heads=4, intermediate_size=64)), AdapterConfig(r=4))
    >>> m.print_trainable_parameters()
    trainable params: 200 || all params: 1,011,560 || trainable%: 0.0198
    """
    if not isinstance(model, nn.Module):
        raise CPTensorTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    share = 100 * trainable / total if total else 0.0
    print(
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}",
        file=sys.stdout if file is None else file,
    )


def as_cp(model: nn.Module, name: str = "default", group: int | None = None) -> Any:
    """Adapter ``name`` as a ``cptensor.CPTensor`` in grid modes (detached copies).

    The factors come in the layout's mode order (``"lorta"``: ``d × d_h × H × L × M``,
    oriented as described in :mod:`cptensor_adapters.layout`), and the weights are
    ``alpha / r`` for every component, so ``reconstruct(as_cp(...))`` is the dense tensor of
    updates. An adapter with several CP tensors (``"lora"``, grouped-query attention) needs
    ``group=`` (see :func:`adapter_groups`).

    Raises
    ------
    ValueError
        several groups and ``group`` not given, or ``group`` out of range.

    Examples
    --------
    >>> from transformers import BertConfig, BertModel
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
    ...            num_attention_heads=4, intermediate_size=64)), AdapterConfig(r=3))
    >>> as_cp(m).shape
    (32, 8, 4, 2, 4)
    """
    from cptensor import CPTensor

    a = require_adapter(model, name)
    if group is None:
        if len(a.groups) != 1:
            raise CPTensorError(
                f"group: adapter {name!r} has {len(a.groups)} CP tensors; pass group=0.."
                f"{len(a.groups) - 1} (see adapter_groups(model, name))"
            )
        group = 0
    if isinstance(group, bool) or not isinstance(group, int) or not 0 <= group < len(a.groups):
        raise CPTensorError(f"group: expected 0..{len(a.groups) - 1}, got {group}")
    with gathered(model, a.groups[group].factor_list()):  # whole factors under FSDP2
        factors = [f.detach().clone() for f in a.groups[group].factor_list()]
    weights = torch.full(
        (a.config.r,), a.config.scaling, dtype=factors[0].dtype, device=factors[0].device
    )
    return CPTensor(weights, factors)


def delta_weights(model: nn.Module, name: str = "default") -> dict[str, torch.Tensor]:
    """Dense update ``ΔW`` of every target of adapter ``name`` (detached).

    Keys are target names (:attr:`Target.name <cptensor_adapters.grid.Target.name>`);
    values are ``(out_features, in_features)`` in ``Linear`` orientation whatever the
    storage (GPT-2 ``Conv1D`` weights are stored transposed), scaling included, in the
    factor dtype.

    Examples
    --------
    >>> from transformers import GPT2Config, GPT2Model
    >>> from cptensor_adapters import AdapterConfig, attach
    >>> m = attach(GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=4)), AdapterConfig(r=2))
    >>> d = delta_weights(m)
    >>> list(d)[:2], tuple(d["h.0.attn.c_attn:k"].shape)
    (['h.0.attn.c_attn:q', 'h.0.attn.c_attn:k'], (32, 32))
    >>> float(d["h.0.attn.c_proj"].abs().sum())  # default init: ΔW = 0
    0.0
    """
    adapter = require_adapter(model, name)
    out: dict[str, torch.Tensor] = {}
    factors = [p for g in adapter.groups for p in g.factor_list()]
    with torch.no_grad(), gathered(model, factors):  # whole factors under FSDP2
        for _, layer in iter_adapter_layers(model):
            if name in layer.pieces:
                out.update(layer.delta_weights(name))
    grid = require_adapter(model, name).grid
    return {t.name: out[t.name] for t in grid.targets}
