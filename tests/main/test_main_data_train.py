"""Data loaders, the training loop and the demo pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cptensor_adapters.data import TextDataset, load_sst2, load_vader, vader_lexicon_path
from cptensor_adapters.train import (
    LENGTH_GROUP_BATCHES,
    TrainConfig,
    _batches,
    evaluate_accuracy,
    load_minilm,
    train_classifier,
)

from .conftest import REPORT_FILES, glue_dir, needs_glue


def test_vader_labels_follow_the_mean_rating():
    split = load_vader(test_fraction=0.2, seed=0)
    n = len(split.train) + len(split.test)
    rows = [
        line.rstrip("\r\n").split("\t") for line in open(vader_lexicon_path(), encoding="utf-8")
    ]
    nonzero: dict[str, float] = {}
    for r in rows:
        if float(r[1]) != 0:
            nonzero.setdefault(r[0], float(r[1]))
    assert n == len(nonzero) - 2 == 7504  # 'd:' and 'd=' have entries of both signs
    assert len(set(split.train.texts + split.test.texts)) == n
    assert len(split.test) == round(0.2 * n)
    for t, y in zip(split.test.texts[:200], split.test.labels[:200]):
        assert y == (1 if nonzero[t] > 0 else 0)
    assert not set(split.train.texts) & set(split.test.texts)
    assert load_vader(seed=0).test == split.test
    assert load_vader(seed=1).test != split.test


def test_vader_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        load_vader(test_fraction=1.5)


def test_sst2_loader(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood film \t1\nbad film \t0\nok \t1\n")
    with pytest.raises(FileNotFoundError, match=r"lacks dev\.tsv"):
        load_sst2(tmp_path)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nfine \t1\n")
    s = load_sst2(tmp_path)
    assert s.train.texts == ("good film", "bad film", "ok") and s.test.labels == (1,)
    assert len(load_sst2(tmp_path, train_size=2).train) == 2
    (tmp_path / "dev.tsv").write_text("text\ty\nfine\t1\n")
    with pytest.raises(ValueError, match="'sentence' and 'label'"):
        load_sst2(tmp_path)


@pytest.mark.parametrize(
    "body, match",
    [
        ("fine\t7\n", r"line 2: expected a sentence and a label 0 or 1"),
        ("fine\t-1\n", "label 0 or 1"),
        ("lonely\n", "label 0 or 1"),
        ("x" * 200_000 + "\t1\n", "line 2: field larger than field limit"),
    ],
)
def test_sst2_rows_are_checked(tmp_path, body, match):
    """Labels like 7 or -1 were accepted until training crashed; an overlong field raised
    csv.Error."""
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + body)
    with pytest.raises(ValueError, match=match) as err:
        load_sst2(tmp_path)
    assert "dev.tsv" in str(err.value)


@needs_glue
def test_real_sst2():
    s = load_sst2(glue_dir())
    assert len(s.train) == 67349 and len(s.test) == 872
    assert set(s.test.labels) == {0, 1}


def test_train_config_validation():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)


def test_training_updates_only_trainable_parameters():
    model, tok = load_minilm(2, seed=0)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier.") or "layer.5.attention.self.query" in name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    toy = TextDataset(("good", "great", "awful", "bad", "nice", "horrible"), (1, 1, 0, 0, 1, 0))
    r = train_classifier(model, tok, toy, toy, TrainConfig(steps=3, batch_size=4, lr=1e-2))
    assert r.steps == 3 and len(r.losses) == 3 and 0 <= r.accuracy <= 1
    assert r.trainable_parameters == 770 + 384 * 384 + 384
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {
        "classifier.weight",
        "classifier.bias",
        "bert.encoder.layer.5.attention.self.query.weight",
        "bert.encoder.layer.5.attention.self.query.bias",
    }


def test_training_is_reproducible():
    toy = TextDataset(tuple("abcdefgh"), (1, 0) * 4)
    losses = []
    for _ in range(2):
        model, tok = load_minilm(2, seed=3)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
        cfg = TrainConfig(steps=3, batch_size=4, seed=3)
        losses.append(train_classifier(model, tok, toy, toy, cfg).losses)
    assert losses[0] == losses[1]


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3 * 8 * LENGTH_GROUP_BATCHES + 40),
    size=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_length_grouped_batches_cover_each_epoch_like_random_ones(n, size, seed, data):
    """Same examples per epoch as plain shuffling, full batches, no repeats, reproducible."""
    lengths = np.array(data.draw(st.lists(st.integers(1, 64), min_size=n, max_size=n)))
    size = min(size, n)
    per_epoch = max(1, n // size)
    plain, grouped = _batches(n, size, seed), _batches(n, size, seed, lengths)
    for epoch in range(2):
        p = [next(plain) for _ in range(per_epoch)]
        g = [next(grouped) for _ in range(per_epoch)]
        assert all(len(b) == size for b in g)
        assert len(set(np.concatenate(g).tolist())) == per_epoch * size  # no repeats
        if epoch == 0:  # same shuffle, so the same examples (later epochs draw anew)
            assert sorted(np.concatenate(p)) == sorted(np.concatenate(g))
    again, grouped = _batches(n, size, seed, lengths), _batches(n, size, seed, lengths)
    assert all((next(again) == next(grouped)).all() for _ in range(2 * per_epoch))


@pytest.mark.parametrize("n", [1000, 3 * 32 * LENGTH_GROUP_BATCHES + 40])
def test_length_grouped_batches_pad_far_less(n):
    lengths = np.random.default_rng(1).integers(1, 64, size=n)
    per_epoch = n // 32
    plain, grouped = _batches(n, 32, 0), _batches(n, 32, 0, lengths)
    for _ in range(2):  # two epochs
        pad_p = sum(lengths[next(plain)].max() * 32 for _ in range(per_epoch))
        pad_g = sum(lengths[next(grouped)].max() * 32 for _ in range(per_epoch))
        assert pad_g < 0.7 * pad_p


def test_group_by_length_training_runs_and_is_reproducible():
    texts = ("good", "a truly wonderful and moving film", "bad", "dull, long and tiresome") * 4
    toy = TextDataset(texts, (1, 1, 0, 0) * 4)
    losses = []
    for _ in range(2):
        model, tok = load_minilm(2, seed=0)
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
        cfg = TrainConfig(steps=3, batch_size=4, seed=1, group_by_length=True)
        losses.append(train_classifier(model, tok, toy, toy, cfg).losses)
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_evaluation_does_not_depend_on_batching():
    """Length-sorted evaluation batches: same accuracy as one sentence at a time."""
    model, tok = load_minilm(2, seed=0)
    texts = ("fine", "an utterly forgettable, overlong mess of a movie", "great fun", "meh") * 3
    data = TextDataset(texts, (1, 0, 1, 0) * 3)
    model.eval()
    with torch.no_grad():
        preds = [int(model(**tok(t, return_tensors="pt")).logits.argmax()) for t in texts]
    expected = np.mean([p == y for p, y in zip(preds, data.labels)])
    for bs in (1, 5, 128):
        assert evaluate_accuracy(model, tok, data, batch_size=bs) == pytest.approx(expected)


def test_no_trainable_parameter_refused():
    model, tok = load_minilm(2)
    for p in model.parameters():
        p.requires_grad_(False)
    toy = TextDataset(("a",), (1,))
    with pytest.raises(ValueError, match="no trainable parameter"):
        train_classifier(model, tok, toy, toy, TrainConfig(steps=1))


def test_quick_demo_end_to_end(tmp_path, capsys):
    from cptensor_adapters.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| method" in text and "held-out accuracy" in text
    for f in (*REPORT_FILES, "training_loss.png"):
        assert (out / f).stat().st_size > 0, f
    doc = json.loads((out / "report.json").read_text())
    labels = [r["method"] for r in doc["table"]]
    assert labels[:2] == ["head only", "LoRA r=8 (Q,K,V,O)"]
    assert doc["delta_analysis"]["shape"] == [384, 32, 12, 6, 4]
    per = doc["delta_analysis"]["per_matrix"]
    assert len(per) == 24 and max(p["numerical"] for p in per) <= 8
    assert np.isfinite(doc["delta_analysis"]["norm"])


def test_choose_threads(monkeypatch):
    from cptensor_adapters.train import choose_threads

    monkeypatch.setenv("CPTENSOR_THREADS", "3")
    assert choose_threads() == 3
    monkeypatch.setenv("CPTENSOR_THREADS", "zero")
    with pytest.raises(ValueError, match="CPTENSOR_THREADS"):
        choose_threads()
    monkeypatch.delenv("CPTENSOR_THREADS")
    monkeypatch.setattr("os.getloadavg", lambda: (100.0, 0.0, 0.0))
    assert choose_threads() == 1
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    assert choose_threads(max_threads=1) == 1


@needs_glue
def test_quick_demo_on_sst2(tmp_path):
    from cptensor_adapters.demo import DEMO_METHODS, run_demo

    doc = run_demo(
        tmp_path, glue_dir=str(glue_dir()), quick=True, verbose=False, methods=(DEMO_METHODS[1],)
    )
    assert doc["data"].startswith("GLUE SST-2") and doc["budget"]["max_length"] == 32
    assert [r["method"] for r in doc["table"]] == ["LoRA r=8 (Q,K,V,O)"]
    assert (tmp_path / "report.md").read_text().count("| LoRA r=8 (Q,K,V,O)") == 1


def test_gradient_clipping_bounds_the_step():
    import torch

    from cptensor_adapters.data import TextDataset
    from cptensor_adapters.train import TrainConfig, load_minilm, train_classifier

    toy = TextDataset(("good", "great", "awful", "bad"), (1, 1, 0, 0))
    moved = {}
    for clip in (None, 1e-6):
        model, tok = load_minilm()
        for p in model.bert.parameters():
            p.requires_grad_(False)
        before = model.classifier.weight.detach().clone()
        cfg = TrainConfig(steps=1, batch_size=4, lr=1.0, warmup_fraction=0.0, max_grad_norm=clip)
        train_classifier(
            model,
            tok,
            toy,
            toy,
            cfg,
            optimizer=lambda m, lr, wd: torch.optim.SGD(
                [p for p in m.parameters() if p.requires_grad], lr=lr
            ),
        )
        moved[clip] = float((model.classifier.weight - before).norm())
    assert moved[1e-6] <= 1.01e-6 < moved[None]
    with pytest.raises(ValueError, match="max_grad_norm"):
        TrainConfig(max_grad_norm=0)
