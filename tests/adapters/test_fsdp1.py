"""The classic ``FullyShardedDataParallel`` wrapper (FSDP1) is refused with a clear error.

FSDP1 cannot be built on CPUs (torch 2.13: "FSDP needs a non-CPU accelerator device"), so
the cases are constructed: a model whose decoder layer is an FSDP1 wrapper (what
Accelerate's FSDP1 leaves inside the model ``unwrap_model`` returns), and a model whose
parameters carry the mark FSDP1 sets on the parameters it flattens.
"""

from __future__ import annotations

import pytest
import torch

import cptensor_adapters as cpa
from cptensor.errors import CPTensorError

from ._fsdp_worker import config
from ._models import build_tiny

fsdp = pytest.importorskip("torch.distributed.fsdp")

REFUSED = "classic torch.distributed.fsdp.FullyShardedDataParallel .*fully_shard \\(FSDP2\\)"


def _fsdp1_wrapper(module: torch.nn.Module) -> torch.nn.Module:
    """An instance of the FSDP1 class around ``module``, built without its ``__init__``
    (which needs an accelerator device)."""
    wrapper = fsdp.FullyShardedDataParallel.__new__(fsdp.FullyShardedDataParallel)
    torch.nn.Module.__init__(wrapper)
    wrapper._fsdp_wrapped_module = module
    return wrapper


def _entry_points(model, tmp_path):
    return {
        "save_adapter": lambda: cpa.save_adapter(model, tmp_path / "a"),
        "save_as_peft_lora": lambda: cpa.save_as_peft_lora(model, tmp_path / "p"),
        "as_cp": lambda: cpa.as_cp(model, group=0),
        "delta_weights": lambda: cpa.delta_weights(model),
        "merge": lambda: cpa.merge(model),
    }


def test_a_model_with_fsdp1_units_is_refused(tmp_path) -> None:
    model = cpa.attach(build_tiny("llama"), config())
    model.layers[1] = _fsdp1_wrapper(model.layers[1])
    for name, call in _entry_points(model, tmp_path).items():
        with pytest.raises(CPTensorError, match="^model: is managed by the " + REFUSED) as err:
            call()
        assert err.value.argument == "model", name
    assert not (tmp_path / "a").exists()


def test_flattened_parameters_are_refused(tmp_path) -> None:
    source = cpa.attach(build_tiny("gpt2"), config())
    cpa.save_adapter(source, tmp_path / "saved")
    model = cpa.attach(build_tiny("gpt2"), config(seed=5))
    for p in model.parameters():
        p._fsdp_flattened = True  # as FSDP1 marks the original parameters it flattens
    for name, call in _entry_points(model, tmp_path).items():
        with pytest.raises(CPTensorError, match=REFUSED) as err:
            call()
        assert err.value.argument in ("model", "params"), name
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(CPTensorError, match="^params: is managed by the " + REFUSED):
        cpa.load_adapter_weights(model, tmp_path / "saved")
    for n, p in model.named_parameters():  # nothing was written
        assert torch.equal(p, before[n]), n


def test_attach_and_load_adapter_refuse_an_fsdp1_model(tmp_path) -> None:
    source = cpa.attach(build_tiny("llama"), config())
    cpa.save_adapter(source, tmp_path / "saved")
    for attach in (
        lambda m: cpa.attach(m, config()),
        lambda m: cpa.load_adapter(m, tmp_path / "saved"),
    ):
        model = build_tiny("llama")
        model.layers[0] = _fsdp1_wrapper(model.layers[0])
        with pytest.raises(CPTensorError, match="^model: is managed by the " + REFUSED):
            attach(model)
        assert not any("cp_adapters" in n for n, _ in model.named_modules())
