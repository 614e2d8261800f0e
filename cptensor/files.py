"""Safe files: atomic writes of one file (a temporary file beside it, then ``os.replace``)
and of a whole directory (:func:`replaced_directory`), bounded reads of small files, and
values made ready for JSON.

A reader (or a crash half-way) never sees a partly written report, figure or array file, nor
a directory holding files of two different saves. Both packages write every file through
this module.

>>> import tempfile
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp())
>>> atomic_write_text(d / "a.txt", "hello")
>>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
('hello', ['a.txt'])
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CPTensorError

__all__ = [
    "MAX_JSON_BYTES",
    "atomic_savefig",
    "atomic_savez",
    "atomic_write_bytes",
    "atomic_write_text",
    "jsonable",
    "read_regular_file",
    "replaced_directory",
]


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open(path, "w") would give (mkstemp gives 0o600)
_DIR_MODE = 0o777 & ~_umask()  # what mkdir would give (mkdtemp gives 0o700)


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
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``).

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "b.bin"
    >>> atomic_write_bytes(p, b"bytes")
    >>> p.read_bytes()
    b'bytes'
    """
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
    """Write ``text`` (UTF-8) to ``path`` atomically.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "r.md"
    >>> atomic_write_text(p, "# report")
    >>> p.read_text()
    '# report'
    """
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


def _fsync_path(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: str, b: str) -> bool:
    """Swap the directory entries ``a`` and ``b`` in one atomic step (Linux ``renameat2``
    with ``RENAME_EXCHANGE``); False where the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # pragma: no cover - glibc < 2.28, musl
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd = -100
    if fn(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # pragma: no cover - old kernel/fs
        return False
    raise OSError(err, os.strerror(err), b)


def _keep_others(old: Path, new: Path) -> None:
    """Hard-link (or copy) into ``new`` every entry of ``old`` that the save did not write,
    so that files other programs keep in the directory survive the swap."""
    for entry in old.iterdir():
        dest = new / entry.name
        if dest.exists() or dest.is_symlink():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), dest)
        elif entry.is_dir():
            shutil.copytree(entry, dest, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(dest))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextmanager
def replaced_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Replace the directory ``path`` as a whole: write the new files into the directory
    this yields (a fresh sibling of ``path``), and on exit it takes ``path``'s place in one
    atomic step. Whatever instant a crash happens at, ``path`` holds the complete old
    content or the complete new content, never a mix of two saves.

    Entries of the old directory that the new one lacks (files other programs keep there)
    are carried over as hard links. The swap is Linux's ``renameat2(RENAME_EXCHANGE)``;
    elsewhere it falls back to two renames, between which a crash leaves the old content
    in a sibling ``.<name>.*.old`` directory and ``path`` missing. If the body raises, the
    new directory is removed and ``path`` is untouched.

    Raises:
        FileExistsError: ``path`` exists and is not a directory.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()) / "adapter"
    >>> with replaced_directory(d) as tmp:
    ...     _ = (tmp / "a.txt").write_text("one")
    >>> with replaced_directory(d) as tmp:
    ...     _ = (tmp / "b.txt").write_text("two")
    >>> sorted(p.name for p in d.iterdir()), sorted(p.name for p in d.parent.iterdir())
    (['a.txt', 'b.txt'], ['adapter'])
    """
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"path: {path} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".new"))
    try:
        os.chmod(tmp, _DIR_MODE)
        yield tmp
        for entry in tmp.rglob("*"):
            if entry.is_file() and not entry.is_symlink():
                os.chmod(entry, _FILE_MODE)  # some writers (safetensors) create files 0o600
                _fsync_path(entry)
        if target.is_dir():
            _keep_others(target, tmp)
        _fsync_path(tmp)
        if not target.exists():
            os.rename(tmp, target)
        elif _exchange(str(tmp), str(target)):
            shutil.rmtree(tmp, ignore_errors=True)  # it now holds the old content
        else:  # pragma: no cover - systems without an atomic exchange
            old = Path(
                tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old")
            )
            os.rmdir(old)
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_path(target.parent)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


#: Bound on the size of a JSON file read from an adapter or checkpoint directory.
MAX_JSON_BYTES = 64 * 2**20


def read_regular_file(
    path: str | os.PathLike[str], what: str, max_bytes: int | None = None
) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes`` (default
    :data:`MAX_JSON_BYTES`).

    Opened without blocking (a FIFO or a device never hangs the reader) and checked on the
    open descriptor, so the file cannot be swapped between the check and the read.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a regular file, or is larger than ``max_bytes``; the
            message starts with ``what`` and names the file.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "c.json"
    >>> _ = p.write_text("{}")
    >>> read_regular_file(p, "config")
    b'{}'
    >>> read_regular_file(p.parent, "config")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    cptensor.errors.CPTensorError: config: ... is not a regular file
    """
    max_bytes = MAX_JSON_BYTES if max_bytes is None else max_bytes
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CPTensorError(f"{what}: {path} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > max_bytes:
            raise CPTensorError(
                f"{what}: {path} holds {info.st_size:,} bytes, more than the {max_bytes:,} "
                "this reader accepts"
            )
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CPTensorError(f"{what}: {path} grew past {max_bytes:,} bytes while being read")
    return data


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars turned into Python numbers, tuples into lists, keys into
    strings, and NaN or infinite floats into ``None`` (which JSON cannot hold).

    >>> import numpy as np
    >>> jsonable({"fit": np.float32(0.5), 2: (np.int64(3), float("nan"))})
    {'fit': 0.5, '2': [3, None]}
    """
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(x) for x in value]
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
