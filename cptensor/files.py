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
import itertools
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CPTensorError, CPTensorKeyError, CPTensorTypeError

__all__ = [
    "MAX_JSON_BYTES",
    "SafetensorsFile",
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

    Raises
    ------
    FileExistsError
        ``path`` exists and is not a directory.

    Examples
    --------
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


_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
}
#: Bytes per element of every dtype the safetensors format defines (readable or not).
_ST_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
_ST_MAX_HEADER = 100 * 2**20  # the safetensors library's own bound


def _validated_header(path: str, data: bytes, file_size: int) -> tuple[dict[str, Any], int]:
    """The tensor entries of a safetensors header and the offset of the data, after checking
    every entry against the file: known dtype, non-negative integer shape, offsets inside
    the data section, byte length = elements × item size, no two tensors overlapping."""
    import json

    def bad(why: str) -> CPTensorError:
        return CPTensorError(f"{path} is not a valid safetensors file: {why}")

    if file_size < 8 or len(data) < 8:
        raise bad(f"{file_size} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > min(file_size - 8, _ST_MAX_HEADER):
        raise bad(f"the header claims {n:,} bytes; the file has {file_size - 8:,} after it")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"the header is not UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = file_size - 8 - n
    spans = []
    for name, spec in header.items():
        if not isinstance(spec, dict):
            raise bad(f"entry {name!r} is not an object")
        dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _ST_ITEMSIZE:
            raise bad(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise bad(f"tensor {name!r} has shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r} outside 0..{data_size}")
        if offsets[1] - offsets[0] != math.prod(shape) * _ST_ITEMSIZE[dtype]:
            raise bad(
                f"tensor {name!r} spans {offsets[1] - offsets[0]} bytes; shape {shape} of "
                f"{dtype} needs {math.prod(shape) * _ST_ITEMSIZE[dtype]}"
            )
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    for (_, end, first), (begin, _, second) in itertools.pairwise(spans):
        if begin < end:
            raise bad(f"tensors {first!r} and {second!r} overlap")
    return header, 8 + n


class SafetensorsFile:
    """The one reader of safetensors files in both packages: the header is read once and
    validated against the file before any byte is trusted — dtype known, shape and
    offsets integers inside the data section, byte length = elements × item size, no two
    tensors overlapping, header length bounded — and each tensor is then memory-mapped on
    demand (no copy). Opening never blocks (a FIFO is refused).

    Raises
    ------
    CPTensorError
        not a regular file, or a header that fails a check (the message
        names the file and what is wrong).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from safetensors.numpy import save_file
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> save_file({"a": np.arange(6.0).reshape(2, 3)}, path)
    >>> f = SafetensorsFile(path)
    >>> f.keys(), f.shape("a"), f.dtype("a"), f.read("a").sum()
    (['a'], (2, 3), 'F64', np.float64(15.0))
    """

    def __init__(self, path: Any) -> None:
        self.path = str(path)
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise CPTensorError(f"{self.path} is not a regular file")
        with os.fdopen(fd, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            head += f.read(min(n, _ST_MAX_HEADER, max(info.st_size - 8, 0)))
        self.header, self.start = _validated_header(self.path, head, info.st_size)

    def keys(self) -> list[str]:
        """The tensor names, in the header's order."""
        return list(self.header)

    def _spec(self, name: str) -> dict[str, Any]:
        try:
            return self.header[name]
        except KeyError:
            raise CPTensorKeyError(f"tensor {name!r} is not in {self.path}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name``."""
        return tuple(self._spec(name)["shape"])

    def dtype(self, name: str) -> str:
        """The safetensors dtype code of tensor ``name`` (``"F32"``, ``"BF16"``, ...)."""
        return str(self._spec(name)["dtype"])

    def read(self, name: str, framework: str = "numpy") -> Any:
        """Tensor ``name``, memory-mapped: a read-only NumPy array (``framework="numpy"``)
        or a torch tensor over the mapping (``"pt"``, needed for bfloat16)."""
        spec = self._spec(name)
        kind = _ST_DTYPES.get(spec["dtype"])
        if kind is None:
            raise CPTensorTypeError(
                f"tensor {name!r} in {self.path} has unsupported dtype {spec['dtype']}"
            )
        shape = tuple(spec["shape"])
        begin, _ = spec["data_offsets"]
        np_kind = "uint16" if kind == "bfloat16" else kind
        if framework not in ("numpy", "pt"):
            raise CPTensorError(f"framework: expected 'numpy' or 'pt', got {framework!r}")
        if kind == "bfloat16" and framework != "pt":
            raise CPTensorTypeError(
                f"tensor {name!r} is bfloat16, which NumPy cannot hold; use framework='pt'"
            )
        if math.prod(shape) == 0:  # nothing to map
            mm = np.zeros(shape, dtype=np_kind)
        else:
            mm = np.memmap(
                self.path, dtype=np_kind, mode="r", offset=self.start + begin, shape=shape
            )
        if framework == "numpy":
            return mm
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only mapping: never written
            t = torch.from_numpy(mm)
        return t.view(torch.bfloat16) if kind == "bfloat16" else t


#: Bound on the size of a JSON file read from an adapter or checkpoint directory.
MAX_JSON_BYTES = 64 * 2**20


def read_regular_file(
    path: str | os.PathLike[str], what: str, max_bytes: int | None = None
) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes`` (default
    :data:`MAX_JSON_BYTES`).

    Opened without blocking (a FIFO or a device never hangs the reader) and checked on the
    open descriptor, so the file cannot be swapped between the check and the read.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ``path`` is not a regular file, or is larger than ``max_bytes``; the
        message starts with ``what`` and names the file.

    Examples
    --------
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
