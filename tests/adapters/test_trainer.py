"""``AdapterTrainer``: checkpoints hold the adapters, and resuming is exact."""

from __future__ import annotations

import torch

import cptensor_adapters as cpa
from cptensor_adapters.trainer import AdapterTrainer

from ._models import VOCAB, bert_config


def _model() -> torch.nn.Module:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(bert_config(num_labels=2))
    cfg = cpa.AdapterConfig(r=2, alpha=4, init="random", seed=3, modules_to_save=["classifier"])
    cpa.attach(model, cfg)
    cpa.attach(model, cfg.replace(seed=4, modules_to_save=[]), name="other")
    cpa.set_active(model, ["default"])
    return model


def _data() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (24, 6), generator=g)
    return [{"input_ids": ids[i], "labels": ids[i, 0] % 2} for i in range(len(ids))]


def _args(out, **kw):
    from transformers import TrainingArguments

    base = dict(
        max_steps=6,
        save_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        seed=0,
        logging_steps=100,
    )
    return TrainingArguments(str(out), **(base | kw))


def _factors(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_checkpoints_hold_adapters_and_resume_exactly(tmp_path):
    uninterrupted = _model()
    AdapterTrainer(model=uninterrupted, args=_args(tmp_path / "a"), train_dataset=_data()).train()
    ckpt = tmp_path / "a" / "checkpoint-3"
    files = {p.name for p in ckpt.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt"} <= files
    assert not any(f.startswith("model") for f in files)  # the base model is not saved
    assert (ckpt / "other" / "adapter_config.json").is_file()  # every adapter is kept
    saved = cpa.read_saved_adapter(ckpt)
    assert any(k.startswith("modules_to_save.classifier") for k in saved.others)

    resumed = _model()
    trainer = AdapterTrainer(model=resumed, args=_args(tmp_path / "b"), train_dataset=_data())
    trainer.train(resume_from_checkpoint=str(ckpt))
    want, got = _factors(uninterrupted), _factors(resumed)
    assert want.keys() == got.keys() and want
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, atol=0, rtol=0, msg=name)
    # the resumed run did train: its factors differ from the checkpoint's
    ref = _model()
    cpa.load_adapter_weights(ref, ckpt)
    assert any(not torch.equal(v, _factors(ref)[k]) for k, v in got.items())
