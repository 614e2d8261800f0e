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

__all__ = [
    "atomic_savefig",
    "atomic_savez",
    "atomic_write_bytes",
    "atomic_write_text",
    "replace_into",
    "temporary_beside",
]


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open(path, "w") would give (mkstemp gives 0o600)


def temporary_beside(path: Path) -> str:
    """A new empty file in ``path``'s directory, to be filled and then moved onto ``path``
    with :func:`replace_into`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def replace_into(tmp: str, path: Path) -> None:
    """Move the finished ``tmp`` onto ``path`` (atomic), with the permissions a plain
    ``open(path, "w")`` would have given it rather than the temporary file's private ones."""
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        replace_into(tmp, path)
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
