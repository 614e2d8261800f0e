"""Real models and the surrounding ecosystem: MiniLM, parameter counts, modules_to_save,
merge_and_unload, half precision, torch.compile, the Hugging Face Trainer."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import cptensor_adapters as cpa
from cptensor_adapters import AdapterConfig

from ._models import bert_config
from .conftest import dense_deltas_from_factors, hidden, perturb_


# --------------------------------------------------------------- parameter counts
def test_minilm_parameter_count_and_behaviour(minilm, tmp_path):
    base = minilm
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 3231, 102]])
    y0 = hidden(base, ids)
    m = cpa.attach(copy.deepcopy(base), AdapterConfig(r=8))
    rep = cpa.parameter_report(m)["default"]
    assert rep.factor_parameters == 3504 == 8 * (384 + 32 + 12 + 6 + 4)
    assert rep.formula == "8·(384 + 32 + 12 + 6 + 4) = 3504"
    assert rep.lora_parameters == 6 * 4 * 8 * (384 + 384)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 3504
    assert torch.equal(hidden(m, ids), y0)
    perturb_(m, scale=0.25)
    y = hidden(m, ids)
    assert (y - y0).abs().max() > 1e-2
    cpa.merge(m)
    torch.testing.assert_close(hidden(m, ids), y, atol=1e-4, rtol=1e-4)
    cpa.unmerge(m)
    cpa.save_adapter(m, tmp_path / "ours")
    loaded = cpa.load_adapter(copy.deepcopy(base), tmp_path / "ours")
    torch.testing.assert_close(hidden(loaded, ids), y)
    peft = pytest.importorskip("peft")
    cpa.save_as_peft_lora(m, tmp_path / "peft")
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    torch.testing.assert_close(hidden(pm, ids), y, atol=1e-4, rtol=1e-4)


def test_roberta_base_parameter_count():
    with torch.device("meta"):  # RoBERTa-base geometry without allocating it
        model = transformers.RobertaModel(transformers.RobertaConfig())
        m = cpa.attach(model, AdapterConfig(r=4))
    rep = cpa.parameter_report(m)["default"]
    assert rep.factor_parameters == 3440 == 4 * (768 + 64 + 12 + 12 + 4)


def test_lora_layout_counts_like_lora(tiny):
    m = cpa.attach(tiny("llama"), AdapterConfig(r=4, layout="lora"))
    rep = cpa.parameter_report(m)["default"]
    assert rep.factor_parameters == rep.lora_parameters == 2 * 4 * ((32 + 32) * 2 + (32 + 16) * 2)
    assert rep.groups == 8 and rep.ratio_to_lora == 1.0


# ---------------------------------------------------------------- modules_to_save
def test_modules_to_save_classifier(tmp_path):
    torch.manual_seed(0)
    base = transformers.BertForSequenceClassification(bert_config(num_labels=3)).eval()
    ids = torch.randint(1, 100, (4, 6))
    logits0 = base(ids).logits
    m = cpa.attach(copy.deepcopy(base), AdapterConfig(r=2, modules_to_save=["classifier"]))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if n.startswith("cp_adapters.")} | {
        "classifier.modules_to_save.default.weight",
        "classifier.modules_to_save.default.bias",
    }
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(ids).logits, torch.tensor([0, 1, 2, 0])).backward()
        opt.step()
    assert torch.equal(m.classifier.original_module.weight, base.classifier.weight)
    assert not torch.equal(m.classifier.modules_to_save["default"].weight, base.classifier.weight)
    logits = m(ids).logits
    with cpa.disabled(m):
        assert torch.equal(m(ids).logits, logits0)
    assert cpa.parameter_report(m)["default"].modules_to_save_parameters == 32 * 3 + 3
    cpa.save_adapter(m, tmp_path)
    loaded = cpa.load_adapter(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(loaded(ids).logits, logits)
    peft = pytest.importorskip("peft")
    cpa.save_as_peft_lora(m, tmp_path / "peft")
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    torch.testing.assert_close(pm(ids).logits, logits, atol=1e-5, rtol=1e-5)
    plain = cpa.merge_and_unload(m)
    assert type(plain.classifier) is torch.nn.Linear
    torch.testing.assert_close(plain(ids).logits, logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- unload / remove
def test_merge_and_unload_gives_a_plain_model(tiny, ids):
    base = tiny("gpt2")
    for p in base.h[0].ln_1.parameters():
        p.requires_grad_(False)  # flags are restored as they were
    m = cpa.attach(copy.deepcopy(base), AdapterConfig(r=2, init="random", alpha=32))
    y = hidden(m, ids)
    plain = cpa.merge_and_unload(m)
    assert plain is m and not hasattr(plain, "cp_adapters")
    assert type(plain.h[0].attn.c_attn).__name__ == "Conv1D"
    assert set(plain.state_dict()) == set(base.state_dict())
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == {
        n: p.requires_grad for n, p in base.named_parameters()
    }
    torch.testing.assert_close(hidden(plain, ids), y, atol=5e-5, rtol=1e-4)


def test_remove_last_adapter_restores_the_model(tiny, ids):
    base = tiny("llama")
    m = cpa.attach(copy.deepcopy(base), AdapterConfig(init="random"))
    cpa.merge(m)
    cpa.remove_adapter(m, "default")
    assert set(m.state_dict()) == set(base.state_dict())
    torch.testing.assert_close(hidden(m, ids), hidden(base, ids), atol=1e-6, rtol=1e-6)


def test_dropout_only_in_training(tiny, ids):
    m = cpa.attach(tiny("llama"), AdapterConfig(init="random", alpha=32, dropout=0.5))
    assert not any(mod.training for mod in m.modules())  # wrappers follow the model's mode
    assert torch.equal(hidden(m, ids), hidden(m, ids))  # eval: deterministic
    m.train()
    assert not torch.equal(hidden(m, ids), hidden(m, ids))


# ----------------------------------------------------------------- half precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_with_float32_factors(tiny, ids, dtype):
    base = tiny("llama")
    m = cpa.attach(copy.deepcopy(base).to(dtype), AdapterConfig(r=4, init="random", alpha=64))
    assert {p.dtype for p in m.cp_adapters.parameters()} == {torch.float32}
    assert m.layers[0].self_attn.q_proj.weight.dtype == dtype  # nothing cast behind our back
    y = hidden(m, ids)
    assert y.dtype == dtype
    # reference: the same adapter on the float32 model
    ref = cpa.attach(copy.deepcopy(base), AdapterConfig(r=4, init="random", alpha=64))
    torch.testing.assert_close(y.float(), hidden(ref, ids), atol=0.1, rtol=0.05)
    y.float().pow(2).mean().backward()
    grads = [p.grad for p in m.cp_adapters.parameters()]
    assert all(
        g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads
    )
    cpa.merge(m)
    assert m.layers[0].self_attn.q_proj.weight.dtype == dtype
    torch.testing.assert_close(hidden(m, ids).float(), y.float(), atol=0.1, rtol=0.05)


# ---------------------------------------------------------------------- compile
def _compile_available() -> bool:
    try:
        import torch._dynamo as dynamo
    except ImportError:  # pragma: no cover
        return False
    return hasattr(torch, "compile") and dynamo.is_dynamo_supported()


def test_torch_compile(tiny, ids):
    if not _compile_available():
        pytest.skip("torch.compile unavailable on this Python/platform")
    m = cpa.attach(tiny("bert"), AdapterConfig(r=2, init="random", alpha=32))
    expected = hidden(m, ids)
    # fullgraph: the adapted model traces without a single graph break
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    got = hidden(compiled, ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got.pow(2).mean().backward()
    assert all(p.grad is not None for p in m.cp_adapters.parameters())


@pytest.mark.slow
def test_torch_compile_inductor(tiny, ids):
    if not _compile_available():
        pytest.skip("torch.compile unavailable on this Python/platform")
    pytest.importorskip("torch._inductor")
    import shutil

    if shutil.which("g++") is None and shutil.which("clang++") is None:
        pytest.skip("no C++ compiler for inductor")
    m = cpa.attach(tiny("llama"), AdapterConfig(r=2, init="random", alpha=32))
    expected = hidden(m, ids)
    compiled = torch.compile(m)
    torch.testing.assert_close(hidden(compiled, ids), expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------- Trainer
def test_hugging_face_trainer(tmp_path):
    pytest.importorskip("accelerate")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(bert_config(num_labels=2))
    model = cpa.attach(model, AdapterConfig(r=2, modules_to_save=["classifier"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    data = [
        {"input_ids": torch.randint(1, 100, (6,), generator=g), "labels": int(i % 2)}
        for i in range(8)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    transformers.Trainer(model=model, args=args, train_dataset=data).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n in before if n.startswith("cp_adapters.")} | {
        "classifier.modules_to_save.default.weight",
        "classifier.modules_to_save.default.bias",
    }
    deltas, oracle = cpa.delta_weights(model), dense_deltas_from_factors(model)
    assert any(d.abs().max() > 0 for d in deltas.values())
    for k in deltas:
        torch.testing.assert_close(deltas[k], oracle[k])
