"""The core demonstration runs on the real kinetic tensor and reports consistent numbers."""

from __future__ import annotations

import pytest

import cptensor as ct
from cptensor import demo_core


def test_demo_core_without_fit(monkeypatch):
    """The SVD path (taken when no fitting is available) is fast enough for the suite."""
    pytest.importorskip("tensorly")
    if hasattr(ct, "fit_als"):
        monkeypatch.delattr(ct, "fit_als")
    lines: list[str] = []
    numbers = demo_core.run(out=lines.append, rank=3, repeats=1)
    text = "\n".join(lines)
    assert "(64, 12, 10, 60)" in text
    assert "singular vectors" in text
    assert "MTTKRP" in text and "cptensor.norm" in text
    assert numbers["cp_norm"] == pytest.approx(numbers["dense_norm"], rel=1e-10)
    assert 0 < numbers["rel_error"] < 0.5
