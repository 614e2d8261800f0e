"""``BlockTensor.from_safetensors`` trusts nothing in a file's header: offsets that alias
another tensor or point into the header, wrong sizes, unknown dtypes, truncated and empty
files all give a ``ValueError`` naming the file, before any block is read."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cptensor import BlockTensor


def _write(path, header: dict, data: bytes, *, declared: int | None = None) -> str:
    raw = json.dumps(header).encode()
    n = len(raw) if declared is None else declared
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return str(path)


def _valid() -> tuple[dict, bytes]:
    a = np.arange(6, dtype=np.float32)
    b = np.arange(6, 12, dtype=np.float32)
    header = {
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 48]},
    }
    return header, a.tobytes() + b.tobytes()


def _open(path: str) -> BlockTensor:
    return BlockTensor.from_safetensors(path, lambda k: "ab"[k[0]], (2, 3, 2), (0, 1))


def test_a_valid_crafted_file_reads(tmp_path):
    header, data = _valid()
    bt = _open(_write(tmp_path / "ok.safetensors", header, data))
    assert np.array_equal(bt.to_dense()[..., 1], np.arange(6, 12).reshape(2, 3))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda h: h["b"].update(data_offsets=[0, 24]), "overlap"),  # aliases "a"
        (lambda h: h["b"].update(data_offsets=[-8, 16]), "outside"),  # into the header
        (lambda h: h["b"].update(data_offsets=[24, 4000]), "outside"),
        (lambda h: h["b"].update(shape=[2, 4]), "needs 32"),
        (lambda h: h["b"].update(shape=[2, -3]), "shape"),
        (lambda h: h["b"].update(shape="2x3"), "shape"),
        (lambda h: h["b"].update(dtype="F128"), "unknown dtype"),
        (lambda h: h["b"].update(data_offsets=[24]), "data_offsets"),
        (lambda h: h.update(b=[1, 2]), "not an object"),
    ],
)
def test_crafted_headers_are_refused(tmp_path, edit, match):
    header, data = _valid()
    edit(header)
    path = _write(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match=match) as err:
        _open(path)
    assert "bad.safetensors" in str(err.value)


@pytest.mark.parametrize("size", [0, 3, 8, 20])
def test_truncated_and_empty_files(tmp_path, size):
    header, data = _valid()
    full = tmp_path / "full.safetensors"
    _write(full, header, data)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:size])
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        _open(str(cut))


def test_a_header_length_beyond_the_file(tmp_path):
    header, data = _valid()
    path = _write(tmp_path / "h.safetensors", header, data, declared=2**60)
    with pytest.raises(ValueError, match="the header claims"):
        _open(path)


def test_a_header_that_is_not_json(tmp_path):
    path = tmp_path / "j.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{[" + b"\0" * 16)
    with pytest.raises(ValueError, match="not UTF-8 JSON"):
        _open(str(path))


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_never_crash_otherwise(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "f.safetensors"
    path.write_bytes(data)
    try:
        _open(str(path))
    except ValueError:
        pass
