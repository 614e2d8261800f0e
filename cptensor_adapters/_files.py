"""Atomic file writes: a temporary file in the target's directory, then ``os.replace``.

A reader (or a crash half-way) never sees a partly written report, figure or array file.

>>> import tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> atomic_write_text(d / "a.txt", "hello")
>>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
('hello', ['a.txt'])
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_savefig", "atomic_savez", "atomic_write_bytes", "atomic_write_text"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """``fig.savefig`` to ``path`` atomically (the format from the file's suffix).

    >>> import tempfile
    >>> from pathlib import Path
    >>> from matplotlib.figure import Figure
    >>> fig = Figure()
    >>> _ = fig.subplots().plot([0, 1])
    >>> p = Path(tempfile.mkdtemp()) / "f.png"
    >>> atomic_savefig(fig, p, dpi=50)
    >>> p.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    atomic_write_bytes(path, buf.getvalue())


def atomic_savez(path: str | os.PathLike[str], **arrays: Any) -> Path:
    """``numpy.savez`` to ``path`` atomically; like NumPy, ``.npz`` is appended when the
    name lacks it. Returns the path written.

    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> p = atomic_savez(Path(tempfile.mkdtemp()) / "cp", w=np.ones(2))
    >>> p.name, np.load(p)["w"].tolist()
    ('cp.npz', [1.0, 1.0])
    """
    import numpy as np

    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path
