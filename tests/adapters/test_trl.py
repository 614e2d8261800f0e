"""TRL: ``AdapterSFTTrainer`` and ``AdapterDPOTrainer`` train only the adapters of tiny
causal LMs (GPT-2, Llama with grouped-query attention) built from configs, with a
word-level tokenizer built from the synthetic texts (nothing is downloaded); DPO's
reference is the model with its adapters switched off, not a copy."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl", reason="TRL is not installed (pip install 'cptensor[dev]')")
pytest.importorskip("datasets", reason="TRL needs the datasets package")

import cptensor_adapters as cpa
from cptensor.errors import CPTensorError

from ._models import gpt2_config, llama_config

WORDS = "the a cat dog sat ran on under mat rug big small red blue quickly slowly".split()
SPECIAL = ["<pad>", "<unk>", "<eos>"]


def _texts(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(WORDS), (n, 5), generator=g)
    return [" ".join(WORDS[i] for i in row) for row in idx.tolist()]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [*_texts(64, 0), " ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=SPECIAL)
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )


def _causal_lm(arch: str, vocab: int) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, bos_token_id=2, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        return transformers.GPT2LMHeadModel(gpt2_config(**common))
    cfg = llama_config(**common)
    return transformers.LlamaForCausalLM(cfg)


def _adapted(arch: str, tokenizer, init: str = "random") -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the adapted model, an untouched copy of its base model)."""
    base = _causal_lm(arch, len(tokenizer))
    plain = copy.deepcopy(base)
    cfg = cpa.AdapterConfig(r=2, alpha=8, init=init, seed=3)
    return cpa.attach(base, cfg), plain


def _common_args() -> dict:
    return dict(
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        seed=0,
        logging_steps=1,
        save_steps=2,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # TRL's configs default to bf16 autocast where the CPU has it: float32 here
        bf16=False,
    )


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _assert_only_adapter_trained(model, before: dict, frozen_before: dict) -> None:
    after = _trainable(model)
    assert after.keys() == before.keys() and all("cp_adapters" in n for n in after)
    assert any(not torch.equal(after[n], before[n]) for n in after), "no factor moved"
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), f"frozen {n} changed"


def _assert_adapter_checkpoint(ckpt, model) -> None:
    """The checkpoint holds the adapter's factors and nothing of the base model."""
    from safetensors.torch import load_file

    files = {p.name for p in ckpt.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files, files
    assert not any(f.startswith(("model", "pytorch_model")) for f in files), files
    stored = load_file(str(ckpt / "adapter_model.safetensors"))
    assert stored and all(k.startswith("groups.") for k in stored), sorted(stored)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(t.numel() for t in stored.values()) == trainable


def _frozen(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_sft_trains_only_the_adapter_and_saves_it(tmp_path, arch: str) -> None:
    from datasets import Dataset
    from trl import SFTConfig

    from cptensor_adapters.trl_trainers import AdapterSFTTrainer

    tok = _tokenizer()
    model, _ = _adapted(arch, tok, init="default")
    data = Dataset.from_list([{"text": t} for t in _texts(16, 1)])
    args = SFTConfig(str(tmp_path), max_length=16, **_common_args())
    trainer = AdapterSFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    before, frozen = _trainable(model), _frozen(model)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    _assert_only_adapter_trained(model, before, frozen)
    ckpt = tmp_path / "checkpoint-2"
    _assert_adapter_checkpoint(ckpt, model)
    # the checkpoint reproduces the trained model on a fresh base model
    ids = tok(["the cat sat on the mat"], return_tensors="pt").input_ids
    restored = cpa.load_adapter(_causal_lm(arch, len(tok)).eval(), ckpt)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(ids).logits, model(ids).logits)


def _dpo_data():
    from datasets import Dataset

    prompts, good, bad = _texts(8, 2), _texts(8, 3), _texts(8, 4)
    return Dataset.from_list(
        [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(prompts, good, bad)]
    )


def _logps(model, batch) -> torch.Tensor:
    """Summed log-probabilities of the completion tokens of each row: an oracle written
    from the logits, independently of TRL's fused head."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].to(logp.dtype)
    return (logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1) * mask).sum(dim=1)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_dpo_reference_is_the_model_with_adapters_off(tmp_path, arch: str) -> None:
    import torch.nn.functional as F
    from trl import DPOConfig

    from cptensor_adapters.trl_trainers import AdapterDPOTrainer

    tok = _tokenizer()
    # a random start: the policy differs from the base model from the first step, so a
    # reference taken from the policy (a copy of it) would be told apart
    model, plain = _adapted(arch, tok, init="random")
    args = DPOConfig(str(tmp_path), max_length=32, beta=0.5, **_common_args())
    trainer = AdapterDPOTrainer(
        model=model, args=args, train_dataset=_dpo_data(), processing_class=tok
    )
    assert trainer.ref_model is None  # no copy of the model was made
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    plain.eval()
    model.eval()

    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    want_ref = _logps(plain, batch)
    torch.testing.assert_close(
        torch.cat([ref_chosen, ref_rejected]), want_ref, atol=1e-4, rtol=1e-4
    )
    policy = _logps(model, batch)
    assert (policy - want_ref).abs().max() > 1e-3, "the adapter does not change the log-probs"

    # the DPO loss of the batch uses the base model as the reference
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    pc, pr = policy.chunk(2)
    rc, rr = want_ref.chunk(2)
    want_loss = -F.logsigmoid(args.beta * ((pc - rc) - (pr - rr))).mean()
    torch.testing.assert_close(loss, want_loss, atol=1e-4, rtol=1e-4)
    assert trainer.ref_model is None

    before, frozen = _trainable(model), _frozen(model)
    model.train()
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert trainer.ref_model is None
    _assert_only_adapter_trained(model, before, frozen)
    _assert_adapter_checkpoint(tmp_path / "checkpoint-2", model)
    # after training the reference is still the base model, and the policy moved away
    model.eval()
    ref_after = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
    torch.testing.assert_close(ref_after, want_ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(_logps(model, batch), policy, atol=1e-4)


def test_dpo_zero_start_loss_is_log_two(tmp_path) -> None:
    """With the default start (ΔW = 0) the policy is the base model, so the first DPO
    loss is exactly ln 2 whatever the data."""
    from trl import DPOConfig

    from cptensor_adapters.trl_trainers import AdapterDPOTrainer

    tok = _tokenizer()
    model, _ = _adapted("gpt2", tok, init="default")
    args = DPOConfig(str(tmp_path), max_length=32, **_common_args())
    trainer = AdapterDPOTrainer(model, args=args, train_dataset=_dpo_data(), processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(loss, torch.tensor(0.6931472), atol=1e-6, rtol=0)


def test_bad_arguments_are_named(tmp_path) -> None:
    from trl import DPOConfig

    from cptensor_adapters.trl_trainers import AdapterDPOTrainer, AdapterSFTTrainer

    tok = _tokenizer()
    plain = _causal_lm("gpt2", len(tok))
    with pytest.raises(CPTensorError, match=r"^model: AdapterSFTTrainer expects a model with"):
        AdapterSFTTrainer(model=plain, processing_class=tok)
    with pytest.raises(CPTensorError, match=r"^model: AdapterDPOTrainer"):
        AdapterDPOTrainer("gpt2")
    adapted, _ = _adapted("gpt2", tok)
    with pytest.raises(CPTensorError, match=r"^peft_config: "):
        AdapterSFTTrainer(model=adapted, peft_config=object())
    args = DPOConfig(str(tmp_path), sync_ref_model=True, **_common_args())
    with pytest.raises(CPTensorError, match=r"^args.sync_ref_model: "):
        AdapterDPOTrainer(adapted, args=args, train_dataset=_dpo_data(), processing_class=tok)
