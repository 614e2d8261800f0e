"""Atomic writes: a failure leaves the old file and no temporary behind."""

from __future__ import annotations

import numpy as np
import pytest

from cptensor_adapters._files import atomic_savefig, atomic_savez, atomic_write_text


class _BrokenFigure:
    def savefig(self, buf, **kwargs):
        buf.write(b"partial")
        raise RuntimeError("renderer failed")


def test_failed_figure_keeps_the_old_file(tmp_path):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="renderer failed"):
        atomic_savefig(_BrokenFigure(), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_text_replaces_whole_file(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_text(target, "x" * 1000)
    atomic_write_text(target, "{}")
    assert target.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_write_into_missing_directory_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "nope" / "r.md", "text")
    assert list(tmp_path.iterdir()) == []


def test_savez_appends_suffix_like_numpy(tmp_path):
    p = atomic_savez(tmp_path / "cp.bin", a=np.arange(3))
    assert p.name == "cp.bin.npz" and np.load(p)["a"].tolist() == [0, 1, 2]
    assert atomic_savez(tmp_path / "x.npz", a=np.zeros(1)).name == "x.npz"
