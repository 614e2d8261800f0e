"""LoRTA adapters for transformers: one CP-factored update across layers, heads and Q/K/V/O.

Map a model's weight grid onto tensor modes (:class:`WeightGrid`, :class:`Layout`), attach
an adapter (:func:`attach` with an :class:`AdapterConfig`), train it like any module, then
merge, save, load, export to PEFT LoRA or hand it to the rank analysis (:func:`as_cp`,
:func:`delta_weights`, or :func:`extract_adapter_delta` and :func:`analyze_delta` on a saved
adapter; these and :func:`extract_delta`, :func:`extract_lora_delta` and
:class:`DeltaReport` are re-exported from :mod:`cptensor_adapters.deltas`). LoRA
(``layout="lora"``) and custom layouts are special cases of the same mechanism.
Training aids: the initialisations of :mod:`cptensor_adapters.inits`, per-factor
learning rates and CP preconditioning (:func:`create_optimizer`), and a gradient-aligned
start (:func:`gradient_init`).

Examples
--------
>>> import torch
>>> from transformers import BertConfig, BertModel
>>> import cptensor_adapters as cpa
>>> model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
...                              num_attention_heads=4, intermediate_size=64))
>>> model = cpa.attach(model, cpa.AdapterConfig(r=4, layout="lorta"))
>>> cpa.parameter_report(model)["default"].formula
'4·(32 + 8 + 4 + 2 + 4) = 200'
"""

# The package is imported lazily (PEP 562): ``cptensor_adapters.cli`` and the CP commands
# run without torch, which only the adapter modules need. Static tools (type checkers,
# the docs' griffe) read the imports below.
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cptensor.errors import CPTensorError

    from .config import INITS, AdapterConfig
    from .deltas import (
        DeltaReport,
        analyze_delta,
        extract_adapter_delta,
        extract_delta,
        extract_lora_delta,
    )
    from .grad_align import gradient_init
    from .grid import ATTENTION_ROLES, Target, WeightGrid
    from .io import (
        SavedAdapter,
        load_adapter,
        load_adapter_weights,
        read_saved_adapter,
        save_adapter,
        save_pretrained,
    )
    from .layout import AXES, LAYOUTS, GroupPlan, Layout, plan_groups
    from .model import (
        ParameterReport,
        active_adapters,
        adapter_groups,
        adapter_names,
        as_cp,
        attach,
        delta_weights,
        disabled,
        get_config,
        merge,
        merge_and_unload,
        merged_adapters,
        parameter_report,
        print_trainable_parameters,
        remove_adapter,
        set_active,
        unmerge,
    )
    from .modules import CPAdapterLayer, FactorStore, ModulesToSaveWrapper
    from .optim import CPPreconditioner, create_optimizer, factor_param_groups
    from .peft_export import save_as_peft_lora

_LAZY: dict[str, str] = {
    "ATTENTION_ROLES": ".grid",
    "AXES": ".layout",
    "AdapterConfig": ".config",
    "CPAdapterLayer": ".modules",
    "CPPreconditioner": ".optim",
    "CPTensorError": "cptensor.errors",
    "DeltaReport": ".deltas",
    "FactorStore": ".modules",
    "GroupPlan": ".layout",
    "INITS": ".config",
    "LAYOUTS": ".layout",
    "Layout": ".layout",
    "ModulesToSaveWrapper": ".modules",
    "ParameterReport": ".model",
    "Target": ".grid",
    "WeightGrid": ".grid",
    "active_adapters": ".model",
    "adapter_groups": ".model",
    "adapter_names": ".model",
    "analyze_delta": ".deltas",
    "as_cp": ".model",
    "attach": ".model",
    "create_optimizer": ".optim",
    "delta_weights": ".model",
    "disabled": ".model",
    "extract_adapter_delta": ".deltas",
    "extract_delta": ".deltas",
    "extract_lora_delta": ".deltas",
    "factor_param_groups": ".optim",
    "get_config": ".model",
    "gradient_init": ".grad_align",
    "load_adapter": ".io",
    "load_adapter_weights": ".io",
    "read_saved_adapter": ".io",
    "SavedAdapter": ".io",
    "merge": ".model",
    "merge_and_unload": ".model",
    "merged_adapters": ".model",
    "parameter_report": ".model",
    "plan_groups": ".layout",
    "print_trainable_parameters": ".model",
    "remove_adapter": ".model",
    "save_adapter": ".io",
    "save_pretrained": ".io",
    "save_as_peft_lora": ".peft_export",
    "set_active": ".model",
    "unmerge": ".model",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cptensor_adapters' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ATTENTION_ROLES",
    "AXES",
    "INITS",
    "LAYOUTS",
    "AdapterConfig",
    "CPAdapterLayer",
    "CPPreconditioner",
    "CPTensorError",
    "DeltaReport",
    "FactorStore",
    "GroupPlan",
    "Layout",
    "ModulesToSaveWrapper",
    "ParameterReport",
    "SavedAdapter",
    "Target",
    "WeightGrid",
    "active_adapters",
    "adapter_groups",
    "adapter_names",
    "analyze_delta",
    "as_cp",
    "attach",
    "create_optimizer",
    "delta_weights",
    "disabled",
    "extract_adapter_delta",
    "extract_delta",
    "extract_lora_delta",
    "factor_param_groups",
    "get_config",
    "gradient_init",
    "load_adapter",
    "load_adapter_weights",
    "merge",
    "merge_and_unload",
    "merged_adapters",
    "parameter_report",
    "plan_groups",
    "print_trainable_parameters",
    "read_saved_adapter",
    "remove_adapter",
    "save_adapter",
    "save_as_peft_lora",
    "save_pretrained",
    "set_active",
    "unmerge",
]
