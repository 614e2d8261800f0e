"""What PEFT users do with an adapted model works: ``model.save_pretrained`` writes a
checkpoint that ``from_pretrained`` reloads as the base model (the adapters beside it, or
merged in on request), the state dict keeps the base model's names,
``model.print_trainable_parameters()`` prints PEFT's line, the LoRA comparison of
``parameter_report`` counts what PEFT's LoRA trains, and PEFT's config keywords are
answered with the field to use."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import cptensor_adapters as cpa
from cptensor.errors import CPTensorError
from cptensor_adapters import AdapterConfig

from ._models import ARCHS, bert_config

# PEFT's LoRA on the same modules as this library's default targets (attention Q, K, V, O)
PEFT_TARGETS = {
    "bert": ["query", "key", "value", "attention.output.dense"],
    "gpt2": ["attn.c_attn", "attn.c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


def out(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids)[0]


def reload(model_or_cls: nn.Module | type, path: Path) -> nn.Module:
    """``from_pretrained`` as the architecture's tiny model is built (BERT without pooler),
    checking that the checkpoint has exactly the keys the model wants."""
    cls = model_or_cls if isinstance(model_or_cls, type) else type(model_or_cls)
    kwargs = {"add_pooling_layer": False} if cls.__name__ == "BertModel" else {}
    loaded, info = cls.from_pretrained(str(path), output_loading_info=True, **kwargs)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return loaded.eval()


def trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """Pretend training: move every trainable parameter (factors, modules_to_save copies)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------- save_pretrained
@pytest.mark.parametrize("arch", ARCHS)
def test_save_pretrained_reloads_the_base_and_the_adapter_beside_it(arch, tiny, ids, tmp_path):
    base = tiny(arch)
    y_base = out(base, ids)
    model = trained(cpa.attach(copy.deepcopy(base), AdapterConfig(r=4, init="random")))
    y_adapted = out(model, ids)
    assert not torch.allclose(y_adapted, y_base, atol=1e-3)

    model.save_pretrained(tmp_path)
    # the checkpoint holds the base model's keys only, as the base model saves them
    base.save_pretrained(tmp_path / "plain")
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved.keys() == load_file(str(tmp_path / "plain" / "model.safetensors")).keys()
    assert sorted(p.name for p in (tmp_path / "cp_adapters").iterdir()) == ["default"]

    again = reload(base, tmp_path)
    assert_same_weights(again, base)  # bit for bit
    assert torch.equal(out(again, ids), y_base)
    adapted = cpa.load_adapter(again, tmp_path / "cp_adapters" / "default")
    torch.testing.assert_close(out(adapted, ids), y_adapted, atol=1e-6, rtol=1e-6)
    # saving changed nothing in the model
    assert cpa.adapter_names(model) == ("default",) and not cpa.merged_adapters(model)
    assert torch.equal(out(model, ids), y_adapted)


@pytest.mark.parametrize("arch", ARCHS)
def test_merged_save_is_the_adapted_model_without_adapters(arch, tiny, ids, tmp_path):
    base = tiny(arch)
    model = trained(cpa.attach(copy.deepcopy(base), AdapterConfig(r=4, init="random")))
    y_adapted = out(model, ids)
    model.save_pretrained(tmp_path, merged=True)
    assert not (tmp_path / "cp_adapters").exists()
    again = reload(base, tmp_path)
    torch.testing.assert_close(out(again, ids), y_adapted, atol=1e-5, rtol=1e-5)
    # the weights are what merge_and_unload leaves, bit for bit; the model is unchanged
    assert_same_weights(again, cpa.merge_and_unload(copy.deepcopy(model)))
    assert not cpa.merged_adapters(model)
    assert torch.equal(out(model, ids), y_adapted)


def test_merged_adapters_need_an_explicit_choice(tiny, ids, tmp_path):
    base = tiny("gpt2")
    model = cpa.merge(trained(cpa.attach(copy.deepcopy(base), AdapterConfig(init="random"))))
    with pytest.raises(CPTensorError, match=r"merged into the base weights.*unmerge.*merged=True"):
        model.save_pretrained(tmp_path / "a")
    assert not (tmp_path / "a" / "model.safetensors").exists()
    # merged=True adds nothing twice
    model.save_pretrained(tmp_path / "b", merged=True)
    assert_same_weights(reload(base, tmp_path / "b"), cpa.merge_and_unload(copy.deepcopy(model)))
    # unmerged, the base model and the adapter are saved (the unmerged weights are W + Δ - Δ)
    cpa.unmerge(model)
    model.save_pretrained(tmp_path / "c")
    torch.testing.assert_close(
        out(reload(base, tmp_path / "c"), ids), out(base, ids), atol=1e-6, rtol=0
    )


def test_modules_to_save_originals_stay_base_and_copies_go_with_the_adapter(ids, tmp_path):
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(bert_config(num_labels=3)).eval()
    cfg = AdapterConfig(r=2, init="random", modules_to_save=["classifier"])
    model = trained(cpa.attach(copy.deepcopy(base), cfg))
    y = out(model, ids)
    model.save_pretrained(tmp_path)
    again = reload(base, tmp_path)
    assert_same_weights(again, base)  # the original classifier, not the trained copy
    torch.testing.assert_close(
        out(cpa.load_adapter(again, tmp_path / "cp_adapters" / "default"), ids), y
    )
    model.save_pretrained(tmp_path / "merged", merged=True)
    merged = reload(base, tmp_path / "merged")
    copy_weight = model.classifier.modules_to_save["default"].weight
    assert torch.equal(merged.classifier.weight, copy_weight)
    torch.testing.assert_close(out(merged, ids), y, atol=1e-5, rtol=1e-5)


def test_every_adapter_is_saved_and_stale_ones_are_removed(tiny, ids, tmp_path):
    model = cpa.attach(tiny("llama"), AdapterConfig(r=2, init="random", seed=1))
    cpa.attach(model, AdapterConfig(r=3, layout="lora", init="random", seed=2), name="other")
    model.save_pretrained(tmp_path)
    root = tmp_path / "cp_adapters"
    assert sorted(p.name for p in root.iterdir()) == ["default", "other"]
    (root / "notes").mkdir()  # not an adapter: left alone
    cpa.remove_adapter(model, "other")
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["default", "notes"]
    model.save_pretrained(tmp_path, merged=True)
    assert sorted(p.name for p in root.iterdir()) == ["notes"]


def test_save_pretrained_refuses_bad_arguments(tiny, tmp_path):
    with pytest.raises(TypeError, match="save_adapter"):
        cpa.save_pretrained(nn.Linear(2, 2), tmp_path)
    model = cpa.attach(tiny("bert"), AdapterConfig(r=2))
    with pytest.raises(TypeError, match="merged: expected True or False"):
        model.save_pretrained(tmp_path, merged="yes")
    with pytest.raises(ValueError, match="state_dict: cannot be combined with merged=True"):
        model.save_pretrained(tmp_path, merged=True, state_dict=model.state_dict())
    assert not any(tmp_path.iterdir())
    # a state_dict given is saved as the base model (adapter keys dropped)
    model.save_pretrained(tmp_path, state_dict=model.state_dict())
    assert not any(
        k.startswith("cp_adapters.") for k in load_file(str(tmp_path / "model.safetensors"))
    )


def test_methods_follow_the_model(tiny, tmp_path):
    model = cpa.attach(tiny("bert"), AdapterConfig(r=2))
    assert model.save_pretrained.__self__ is model
    twin = copy.deepcopy(model)  # bound to the copy, not to the original
    assert twin.save_pretrained.__self__ is twin
    assert twin.print_trainable_parameters.__self__ is twin
    plain = cpa.merge_and_unload(model)
    assert "save_pretrained" not in vars(plain) and "print_trainable_parameters" not in vars(plain)
    cpa.remove_adapter(twin, "default")
    assert "save_pretrained" not in vars(twin)
    plain.save_pretrained(tmp_path)  # transformers' own method again
    assert not (tmp_path / "cp_adapters").exists()
    # a module that is not a transformers model gets the summary, not a save_pretrained
    lin = cpa.attach(nn.Sequential(nn.Linear(4, 4)), AdapterConfig(r=1, targets=["0"]))
    assert "print_trainable_parameters" in vars(lin) and "save_pretrained" not in vars(lin)


# ------------------------------------------------------------------------- state dict
@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_keeps_the_base_names(arch, tiny, ids):
    base = tiny(arch)
    model = trained(cpa.attach(copy.deepcopy(base), AdapterConfig(r=2, init="random")))
    state = model.state_dict()
    extra = set(state) - set(base.state_dict())
    assert set(base.state_dict()) <= set(state)
    assert extra and all(k.startswith("cp_adapters.") for k in extra)
    assert list(state)[: len(base.state_dict())] == list(base.state_dict())  # same order
    # a plain model loads the base part; an adapted one everything, in either spelling
    plain = tiny(arch)
    result = plain.load_state_dict(state, strict=False)
    assert not result.missing_keys and set(result.unexpected_keys) == extra
    other = cpa.attach(tiny(arch), AdapterConfig(r=2, init="random", seed=7))
    other.load_state_dict(state)
    assert torch.equal(out(other, ids), out(model, ids))
    old = {}
    for k, v in state.items():
        for path, _ in cpa.modules.iter_adapter_layers(model):
            if k.startswith(path + "."):
                k = f"{path}.base_layer.{k[len(path) + 1 :]}"
        old[k] = v
    assert old.keys() != state.keys()
    third = cpa.attach(tiny(arch), AdapterConfig(r=2, init="random", seed=8))
    third.load_state_dict(old)
    assert torch.equal(out(third, ids), out(model, ids))


def test_named_parameters_are_unchanged(tiny):
    model = cpa.attach(tiny("gpt2"), AdapterConfig(r=2))
    names = [n for n, _ in model.named_parameters()]
    assert "h.0.attn.c_attn.base_layer.weight" in names  # only the state dict is renamed


# ------------------------------------------------------------- trainable parameters line
def test_print_trainable_parameters_matches_peft(tiny, capsys):
    peft = pytest.importorskip("peft")
    ours = cpa.attach(tiny("bert"), AdapterConfig(r=4, layout="lora"))
    ours.print_trainable_parameters()
    line = capsys.readouterr().out
    cfg = peft.LoraConfig(r=4, lora_alpha=4, target_modules=PEFT_TARGETS["bert"])
    peft.get_peft_model(tiny("bert"), cfg).print_trainable_parameters()
    assert line == capsys.readouterr().out
    assert line.startswith("trainable params: ") and line.count(" || ") == 2


def test_print_trainable_parameters_counts(capsys):
    lin = nn.Linear(3, 1)
    lin.bias.requires_grad_(False)
    stream = io.StringIO()
    cpa.print_trainable_parameters(lin, file=stream)
    assert stream.getvalue() == "trainable params: 3 || all params: 4 || trainable%: 75.0000\n"
    cpa.print_trainable_parameters(nn.ReLU())
    assert capsys.readouterr().out.endswith("trainable%: 0.0000\n")
    with pytest.raises(TypeError, match="model"):
        cpa.print_trainable_parameters("model")


# ------------------------------------------------------------------- LoRA comparison
@pytest.mark.parametrize("arch", ARCHS)
def test_lora_count_is_what_peft_trains(arch, tiny):
    peft = pytest.importorskip("peft")
    r = 4
    report = cpa.parameter_report(cpa.attach(tiny(arch), AdapterConfig(r=r)))["default"]
    cfg = peft.LoraConfig(r=r, target_modules=PEFT_TARGETS[arch], fan_in_fan_out=arch == "gpt2")
    lora = peft.get_peft_model(tiny(arch), cfg)
    assert report.lora_parameters == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    if arch == "gpt2":  # one pair on the fused c_attn, r·(d + 3d), not three
        assert report.lora_parameters == 2 * (r * (32 + 96) + r * (32 + 32))


# ------------------------------------------------------------------- PEFT keywords
@pytest.mark.parametrize(
    ("keyword", "answer"),
    [
        ("lora_alpha", "use alpha="),
        ("target_modules", "use targets="),
        ("lora_dropout", "use dropout="),
        ("init_lora_weights", "use init="),
        ("task_type", "no equivalent here: .*modules_to_save"),
        ("bias", "no equivalent here: .*trains no biases"),
        ("use_rslora", r"no equivalent here: .*alpha = lora_alpha \* sqrt\(r\)"),
    ],
)
def test_peft_keywords_name_the_field_to_use(keyword, answer):
    with pytest.raises(TypeError, match=rf"'{keyword}' \(PEFT's name\): {answer}") as err:
        AdapterConfig(**{keyword: 1})
    assert isinstance(err.value, CPTensorError) and err.value.argument == keyword
    with pytest.raises(TypeError, match=answer):
        AdapterConfig().replace(**{keyword: 1})


def test_other_keywords(tmp_path):
    assert AdapterConfig(modules_to_save=["classifier"]).modules_to_save == ["classifier"]
    with pytest.raises(TypeError, match="did you mean alpha="):
        AdapterConfig(alpah=2)
    # a PEFT adapter_config.json is recognised as such
    peft_json = {"r": 8, "lora_alpha": 16, "target_modules": ["query"], "peft_type": "LORA"}
    with pytest.raises(ValueError, match="PEFT's name"):
        AdapterConfig.from_dict(peft_json)
    with pytest.raises(ValueError, match="unknown fields"):
        AdapterConfig.from_dict({"r": 2, "colour": "red"})
    assert AdapterConfig.from_json(json.dumps({"r": 2})).r == 2
    assert copy.deepcopy(AdapterConfig(r=3)) == AdapterConfig(r=3)
