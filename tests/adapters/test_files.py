"""Atomic writes: a failure leaves the old file and no temporary behind."""

from __future__ import annotations

import numpy as np
import pytest

from cptensor.files import atomic_savefig, atomic_savez, atomic_write_text


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


def test_written_files_get_the_permissions_open_would_give(tmp_path):
    """mkstemp's private 0o600 must not leak into reports, figures or adapter files."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = plain.stat().st_mode & 0o777
    atomic_write_text(tmp_path / "r.md", "text")
    p = atomic_savez(tmp_path / "cp", a=np.zeros(1))
    from cptensor_adapters.io import write_adapter_directory

    torch = pytest.importorskip("torch")
    d = write_adapter_directory(tmp_path / "adapter", {"t": torch.zeros(2)}, {"x": 1})
    for f in (tmp_path / "r.md", p, d / "adapter_model.safetensors", d / "adapter_config.json"):
        assert f.stat().st_mode & 0o777 == expected, f.name
    plain_dir = tmp_path / "plain_dir"
    plain_dir.mkdir()
    assert d.stat().st_mode & 0o777 == plain_dir.stat().st_mode & 0o777
