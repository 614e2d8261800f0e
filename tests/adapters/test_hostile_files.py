"""Crash consistency of adapter saves, and hostile adapter files.

Every file operation of a save is made to fail in turn (the nearest a test can come to a
crash at each instant): the directory must then hold the old adapter or the new one,
byte for byte, never a mix and never nothing. Crafted files — regular expressions that
backtrack forever, declared sizes of gigabytes, FIFOs, wrong dtypes, NaN, garbage JSON —
must give a ``ValueError`` naming the file, quickly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import cptensor.files as files
import cptensor_adapters as cpa
import cptensor_adapters.io as cio

from ._models import build_tiny

_TINY: dict[str, torch.nn.Module] = {}


def _tiny(arch: str = "bert") -> torch.nn.Module:
    if arch not in _TINY:
        _TINY[arch] = build_tiny(arch)
    return copy.deepcopy(_TINY[arch])


@contextlib.contextmanager
def _time_bound(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging) when the body runs longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


_OPS = ("rename", "replace", "link", "chmod", "fsync", "symlink")


def _failing_at(k: int, monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Make the ``k``-th file operation of a save raise ``OSError``; returns a counter."""
    calls = [0]

    def wrap(fn):
        def inner(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                raise OSError(f"injected failure at operation {k}")
            return fn(*args, **kwargs)

        return inner

    for name in _OPS:
        monkeypatch.setattr(os, name, wrap(getattr(os, name)))
    monkeypatch.setattr(files, "_exchange", wrap(files._exchange))
    monkeypatch.setattr(shutil, "rmtree", wrap(shutil.rmtree))
    monkeypatch.setattr(cio, "save_file", wrap(save_file))
    monkeypatch.setattr(Path, "write_bytes", wrap(Path.write_bytes))
    return lambda: calls[0]


@pytest.mark.parametrize("writer", ["save_adapter", "save_as_peft_lora"])
def test_a_failed_save_leaves_the_old_adapter_or_the_new(writer, tmp_path):
    save = getattr(cpa, writer)
    d = tmp_path / "adapter"
    old = cpa.attach(_tiny(), cpa.AdapterConfig(r=2, init="random", seed=1))
    save(old, d)
    (d / "README.md").write_text("the user's notes")  # other files must survive
    old_files = _snapshot(d)
    new = cpa.attach(_tiny(), cpa.AdapterConfig(r=3, init="random", seed=2))
    scratch = tmp_path / "scratch"
    save(new, scratch)
    new_files = {**_snapshot(scratch), "README.md": b"the user's notes"}
    assert old_files != new_files
    k, outcomes = 1, set()
    while True:
        with pytest.MonkeyPatch.context() as mp:
            count = _failing_at(k, mp)
            try:
                save(new, d)
                failed = False
            except OSError:
                failed = True
        now = _snapshot(d)
        assert now in (old_files, new_files), f"a mix after a failure at operation {k}"
        outcomes.add("new" if now == new_files else "old")
        leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("adapter", "scratch")]
        if now == old_files:
            assert not leftovers, leftovers  # a failed save cleans up after itself
        if not failed:
            assert now == new_files
            if count() < k:  # no operation left to fail: every instant has been tried
                break
            # (a failure the save recovered from, e.g. a hard link replaced by a copy)
        if now == new_files:  # start every round from the old adapter again
            shutil.rmtree(d)
            save(old, d)
            (d / "README.md").write_text("the user's notes")
        for p in tmp_path.iterdir():
            if p.name not in ("adapter", "scratch"):
                shutil.rmtree(p)
        k += 1
    assert k > 5 and outcomes == {"old", "new"}


def test_loaded_after_every_failure_point(tmp_path):
    """What is on disk after a failed save also loads (not only byte-equal to a save)."""
    d = tmp_path / "a"
    a = cpa.attach(_tiny("gpt2"), cpa.AdapterConfig(r=2, init="random", seed=3))
    cpa.save_adapter(a, d)
    with pytest.MonkeyPatch.context() as mp:
        _failing_at(3, mp)
        with contextlib.suppress(OSError):
            cpa.save_adapter(a, d)
    cpa.load_adapter(_tiny("gpt2"), d)


def test_saving_into_a_file_path_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        cpa.save_adapter(cpa.attach(_tiny(), cpa.AdapterConfig(r=1)), f)


# -- crafted files -----------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path) -> Path:
    d = tmp_path / "saved"
    cpa.save_adapter(cpa.attach(_tiny(), cpa.AdapterConfig(r=2, init="random")), d)
    return d


def _edit_config(d: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((d / "adapter_config.json").read_text())
    edit(meta)
    (d / "adapter_config.json").write_text(json.dumps(meta))


def _load(d: Path) -> None:
    with _time_bound(20):
        cpa.load_adapter(_tiny(), d)


def test_a_backtracking_regex_in_the_file_is_never_run(saved):
    _edit_config(saved, lambda m: m["config"].update(targets="(.*.*)*X"))
    _load(saved)  # the saved grid's module paths select the targets; loads, quickly


def test_a_huge_rank_is_refused_before_allocating(saved):
    _edit_config(saved, lambda m: m["config"].update(r=1_000_000_000))
    with pytest.raises(ValueError, match=r"has shape \(32, 2\).*imply \(32, 1000000000\)"):
        _load(saved)


def test_a_fifo_config_does_not_block(saved):
    (saved / "adapter_config.json").unlink()
    os.mkfifo(saved / "adapter_config.json")
    with pytest.raises(ValueError, match="not a regular file"):
        _load(saved)


def test_a_huge_config_is_refused(saved, monkeypatch):
    monkeypatch.setattr(files, "MAX_JSON_BYTES", 100)
    with pytest.raises(ValueError, match="more than the 100"):
        with _time_bound(20):
            cio.read_adapter_config(saved)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\xff\xfe not utf-8", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON|JSON list"),
        (b"[1, 2]", "JSON list, expected an object"),
        (b'{"format": "cptensor_adapters", "name": "x", "config": {}}', "'grid'"),
        (b'{"format": "cptensor_adapters", "format_version": "1"}', "not an integer"),
    ],
)
def test_garbage_configs_name_the_file(saved, payload, match):
    (saved / "adapter_config.json").write_bytes(payload)
    with pytest.raises(ValueError, match=match) as err:
        _load(saved)
    assert "adapter_config.json" in str(err.value)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m["config"].update(r="8"), "bad config"),
        (lambda m: m["config"].update(nonsense=1), "unknown fields"),
        (lambda m: m["grid"]["targets"][0].update(layer="x"), "geometry|bad grid"),
        (lambda m: m["grid"].update(targets=[{"oops": 1}]), "bad grid"),
        (lambda m: m["grid"].pop("architecture"), "bad grid"),
        (lambda m: m.update(name=7), "'name'"),
    ],
)
def test_crafted_fields_are_named(saved, edit, match):
    _edit_config(saved, edit)
    with pytest.raises(ValueError, match=match):
        _load(saved)


def _rewrite_weights(d: Path, change: Callable[[str, torch.Tensor], torch.Tensor]) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(d / "adapter_model.safetensors"))
    save_file({k: change(k, v) for k, v in tensors.items()}, str(d / "adapter_model.safetensors"))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda k, v: v.to(torch.int64), "dtype I64"),
        (lambda k, v: v.to(torch.bool), "dtype BOOL"),
        (lambda k, v: v.fill_(float("nan")) if k.endswith("out") else v, "NaN or infinite"),
        (lambda k, v: v.fill_(float("inf")) if k.endswith("in") else v, "NaN or infinite"),
        (lambda k, v: v[:1], "has shape"),
    ],
)
def test_bad_tensors_are_refused(saved, change, match):
    _rewrite_weights(saved, change)
    with pytest.raises(ValueError, match=match):
        _load(saved)


@pytest.mark.parametrize("cut", [0, 4, 9, 200])
def test_truncated_weights_name_the_file(saved, cut):
    raw = (saved / "adapter_model.safetensors").read_bytes()
    (saved / "adapter_model.safetensors").write_bytes(raw[:cut])
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors"):
        _load(saved)


def test_a_failed_load_leaves_the_model_as_it_was(saved):
    _rewrite_weights(saved, lambda k, v: v.fill_(float("nan")) if k.endswith("head") else v)
    model = _tiny()
    names = [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError):
        cpa.load_adapter(model, saved)
    assert [n for n, _ in model.named_parameters()] == names
    assert not hasattr(model, "cp_adapters") or not model.cp_adapters.adapters


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_configs_give_value_errors_or_load(tmp_path_factory, data):
    """Any field of a valid config replaced by arbitrary JSON: a ValueError (or a load, when
    the value happens to be acceptable), never another exception, never a hang."""
    d = tmp_path_factory.mktemp("hostile")
    cpa.save_adapter(cpa.attach(_tiny(), cpa.AdapterConfig(r=2, init="random")), d)
    meta = json.loads((d / "adapter_config.json").read_text())
    section = data.draw(st.sampled_from(["top", "config", "grid", "target"]))
    where = {
        "top": meta,
        "config": meta["config"],
        "grid": meta["grid"],
        "target": meta["grid"]["targets"][0],
    }[section]
    key = data.draw(st.sampled_from(sorted(where)))
    where[key] = data.draw(_JSON)
    (d / "adapter_config.json").write_text(json.dumps(meta))
    try:
        _load(d)
    except ValueError:
        pass
