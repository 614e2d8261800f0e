"""The CP commands of the command line, needing only NumPy and SciPy (and Matplotlib for
the sweep's figure): ``python -m cptensor fit`` and ``python -m cptensor sweep``.

The ``cptensor`` console script (:mod:`cptensor_adapters.cli`) offers these and the adapter
commands; this module also holds what every command shares: the bad-input error
(:class:`CLIError`), the checks of input files and outputs, the common options and
:func:`run`, which turns bad input into one line and lets a bug keep its traceback.

>>> main(["fit", "/nonexistent.npy", "--rank", "2"])
2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CPTensorError
from .files import jsonable

__all__ = ["CLIError", "add_cp_commands", "build_parser", "main", "parse_ranks", "run"]

PROG = "cptensor"


class CLIError(CPTensorError):
    """Bad input to a command: reported as one line, exit status 2.

    >>> isinstance(CLIError("--rank must be positive"), ValueError)
    True
    """


#: Most ranks one ``--ranks`` may name (checked before the list is built).
MAX_RANKS = 1024


def parse_ranks(text: str) -> list[int]:
    """Parse ``"1-8"``, ``"1,2,4"``, ``"2-4,8"`` or ``"3"`` into sorted positive ranks.

    Examples
    --------
    >>> parse_ranks("1-3,8")
    [1, 2, 3, 8]
    """
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if lo > hi:
                    raise CLIError(f"rank range {part!r} is empty (start > end)")
                if hi - lo + 1 + len(out) > MAX_RANKS:
                    raise CLIError(
                        f"ranks {text!r} name more than {MAX_RANKS} ranks; a sweep takes a few "
                        "(each rank is a set of fits)"
                    )
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except CLIError:
            raise
        except ValueError:
            raise CLIError(f"ranks must look like 1-8 or 1,2,4; got {text!r}") from None
    if not out or min(out) < 1:
        raise CLIError(f"ranks must be positive integers; got {text!r}")
    return sorted(out)


def load_tensor(path: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"{path}: no such file")
    if p.is_dir():
        raise CLIError(f"{path}: is a directory, expected a .npy file holding a tensor")
    if not p.is_file():
        raise CLIError(f"{path}: not a regular file, expected a .npy file holding a tensor")
    with open(p, "rb") as fh:
        magic = fh.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK\x03\x04"):
        raise CLIError(f"{path}: not a tensor (expected a .npy file written by numpy.save)")
    if magic == b"\x93NUMPY":
        _check_npy_header(p)
    try:
        obj = np.load(p, allow_pickle=False)
        if isinstance(obj, np.lib.npyio.NpzFile):
            obj = {name: _npz_member(p, obj, name) for name in obj.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CLIError(
            f"{path}: not a tensor (expected a .npy file written by numpy.save; "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    if isinstance(obj, dict):
        names = list(obj)
        if len(names) != 1:
            raise CLIError(
                f"{path}: an .npz archive with {len(names)} arrays {names}; "
                "expected a .npy file (or an .npz with exactly one array)"
            )
        obj = obj[names[0]]
    x = np.asarray(obj)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise CLIError(f"{path}: not a real numeric tensor (dtype {x.dtype})")
    if x.ndim < 2:
        raise CLIError(f"{path}: has shape {x.shape}; expected a tensor with at least 2 modes")
    if x.size == 0:
        raise CLIError(f"{path}: is empty (shape {x.shape})")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def _npy_header(fh: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header (format versions 1.0 and 2.0)."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fh)
    else:
        raise CPTensorError(f".npy format version {version} is not supported (1.0, 2.0)")
    return shape, dtype


def _check_npy_header(p: Path) -> None:
    """The shape and dtype a ``.npy`` header declares must fit in the file: a crafted header
    declaring (1e5)³ elements would otherwise make NumPy allocate before reading."""
    size = p.stat().st_size
    try:
        with open(p, "rb") as fh:
            shape, dtype = _npy_header(fh)
            start = fh.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise CLIError(f"{p}: not a .npy file ({str(exc).splitlines()[0]})") from None
    need = math.prod(shape) * dtype.itemsize
    if need > size - start:
        raise CLIError(
            f"{p}: the header declares shape {shape} of {dtype} ({need:,} bytes) but the file "
            f"holds {size - start:,} bytes of data"
        )


def _npz_member(p: Path, archive: Any, name: str) -> Any:
    """One array of an ``.npz`` archive, its declared size checked against the archive's."""
    info = archive.zip.getinfo(name if name.endswith(".npy") else name + ".npy")
    with archive.zip.open(info) as fh:
        shape, dtype = _npy_header(fh)
    if math.prod(shape) * dtype.itemsize > info.file_size:
        raise CLIError(
            f"{p}: member {name!r} declares shape {shape} of {dtype}, more than its "
            f"{info.file_size:,} bytes"
        )
    return archive[name]


def _max_rank(shape: Sequence[int]) -> int:
    """The largest rank any tensor of this shape can have: ∏ sizes / max size."""
    return math.prod(shape) // max(shape)


def check_rank_range(ranks: Sequence[int], shape: Sequence[int]) -> None:
    top = _max_rank(shape)
    bad = [r for r in ranks if r > top]
    if bad:
        raise CLIError(
            f"rank {bad[0]} is out of range for a tensor of shape {tuple(shape)}: "
            f"no tensor of that shape has rank above {top}"
        )


def print_json(payload: Any) -> None:
    """``payload`` as JSON on stdout (NumPy scalars as numbers, NaN and inf as null)."""
    print(json.dumps(jsonable(payload), indent=2))


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if args.json:
        print_json(payload)
    elif not args.quiet:
        print(text)


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to show progress (bars, stage lines): neither ``--json`` nor ``--quiet``."""
    return not args.json and not args.quiet


def say_for(args: argparse.Namespace) -> Callable[[str], None]:
    def say(line: str) -> None:
        if show_progress(args):
            print(line, file=sys.stderr, flush=True)

    return say


# -- commands ---------------------------------------------------------------------------
def check_out(out: str | None, kind: str) -> None:
    """Refuse, before any work, an output that cannot be written: a directory where a file
    is wanted or the other way round, or a parent that is a file."""
    if out is None:
        return
    p = Path(out)
    if kind == "dir" and p.exists() and not p.is_dir():
        raise CLIError(f"--out {out}: exists and is not a directory")
    if kind == "file" and p.is_dir():
        raise CLIError(f"--out {out}: is a directory; expected a file name such as cp.npz")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"--out {out}: {parent} is not a directory")
            if not os.access(parent, os.W_OK):
                raise CLIError(f"--out {out}: {parent} is not writable")
            break


def _cmd_fit(args: argparse.Namespace) -> int:
    from cptensor.fit import fit_als

    check_out(args.out, "file")
    x = load_tensor(args.tensor)
    if args.rank < 1:
        raise CLIError(f"--rank must be a positive integer; got {args.rank}")
    check_rank_range([args.rank], x.shape)
    res = fit_als(
        x,
        args.rank,
        init=args.init,
        seed=args.seed,
        max_iter=args.max_iter,
        tol=args.tol,
        progress=show_progress(args),
    )
    payload = {
        "tensor": args.tensor,
        "shape": list(x.shape),
        "rank": args.rank,
        "fit": res.fit,
        "rel_error": res.rel_error,
        "n_iter": res.n_iter,
        "converged": res.converged,
        "stop_reason": res.stop_reason,
        "seconds": res.seconds,
        "weights": np.asarray(res.cp.weights).tolist(),
    }
    if args.out:
        from .files import atomic_savez

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"factor_{n}": np.asarray(f) for n, f in enumerate(res.cp.factors)}
        out = atomic_savez(
            out,
            weights=np.asarray(res.cp.weights),
            **arrays,
            fit=np.float64(res.fit),
            rel_error=np.float64(res.rel_error),
        )
        payload["out"] = str(out)
    text = (
        f"rank-{args.rank} CP of a {x.shape} tensor: fit {res.fit:.6f} (relative error "
        f"{res.rel_error:.3e}), {res.n_iter} iterations, {res.seconds:.2f} s; "
        f"{res.stop_reason}"
        + (f"\nwrote {payload['out']} (weights, factor_0..factor_{x.ndim - 1})" if args.out else "")
    )
    emit(args, payload, text)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from cptensor.analysis import rank_sweep

    ranks = parse_ranks(args.ranks)
    check_out(args.out, "dir")
    x = load_tensor(args.tensor)
    check_rank_range(ranks, x.shape)
    if args.starts < 1:
        raise CLIError(f"--starts must be a positive integer; got {args.starts}")
    sw = rank_sweep(
        x,
        ranks,
        n_starts=args.starts,
        seed=args.seed,
        fit_kwargs={"max_iter": args.max_iter, "tol": args.tol},
        progress=show_progress(args),
    )
    payload = json.loads(sw.to_json())
    payload["tensor"] = args.tensor
    if args.out:
        from .files import replaced_directory

        out = Path(args.out)
        fig = sw.plot()
        with replaced_directory(out) as tmp:  # sweep.json and sweep.png of one run, always
            (tmp / "sweep.json").write_text(sw.to_json(indent=2))
            fig.savefig(tmp / "sweep.png", dpi=110)
        payload["out"] = str(out)
    cols = ["rank", "best_fit", "fit_spread", "core_consistency", "stability", "degeneracy"]
    lines = [
        f"rank sweep of a {x.shape} tensor ({args.starts} start(s) per rank)",
        "  ".join(f"{c:>16s}" for c in cols) + "  verdict",
    ]
    for row in sw.rows:
        lines.append(
            "  ".join(
                f"{row[c]:>16d}" if isinstance(row[c], int) else f"{row[c]:>16.4f}" for c in cols
            )
            + f"  {row['why']}"
        )
    lines.append(f"recommended rank: {sw.recommended_rank}")
    lines.append(f"rule: {sw.rule}")
    if args.out:
        lines.append(f"wrote {args.out}/sweep.json and sweep.png")
    emit(args, payload, "\n".join(lines))
    return 0


# -- parser -------------------------------------------------------------------------------
# Options that several subcommands share are declared once, by the functions below; each
# subcommand calls them where its options should stand in its --help.
def common_options(p: argparse.ArgumentParser) -> None:
    """``--json``, ``--quiet`` and ``--seed`` (every subcommand, last)."""
    p.add_argument(
        "--json", action="store_true", help="print the result as JSON on stdout (no progress bars)"
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random starts (default %(default)s)"
    )


def tensor_argument(p: argparse.ArgumentParser) -> None:
    """The positional ``TENSOR.npy`` (``fit``, ``sweep``)."""
    p.add_argument("tensor", metavar="TENSOR.npy", help="the tensor (numpy.save format)")


def sweep_options(p: argparse.ArgumentParser, *, ranks_help: str, starts: int) -> None:
    """``--ranks`` and ``--starts`` (``sweep``, ``analyze``, ``analyze-adapter``)."""
    p.add_argument("--ranks", default="1-8", metavar="RANKS", help=ranks_help)
    p.add_argument("--starts", type=int, default=starts, help="fits per rank (default %(default)s)")


def fit_options(p: argparse.ArgumentParser, max_iter: int, tol: float | None = None) -> None:
    """``--max-iter`` and, when ``tol`` is given, ``--tol``."""
    p.add_argument(
        "--max-iter",
        type=int,
        default=max_iter,
        help="ALS iterations per fit at most (default %(default)s)",
    )
    if tol is not None:
        p.add_argument(
            "--tol",
            type=float,
            default=tol,
            help="stop when the fit changes by less than this (default %(default)s)",
        )


def add_cp_commands(sub: Any) -> None:
    """Add ``fit`` and ``sweep`` to the subparsers ``sub`` of a command line.

    >>> p = argparse.ArgumentParser()
    >>> add_cp_commands(p.add_subparsers(dest="command"))
    >>> p.parse_args(["fit", "x.npy", "--rank", "2"]).rank
    2
    """
    f = sub.add_parser(
        "fit",
        help="fit one CP model to a tensor in a .npy file",
        description="Fit a rank-R CP model by alternating least squares "
        "(cptensor.fit.fit_als) and report its fit; NaN entries "
        "are treated as missing.",
    )
    tensor_argument(f)
    f.add_argument("--rank", type=int, required=True, metavar="R", help="CP rank (>= 1)")
    f.add_argument(
        "--out",
        default=None,
        metavar="CP.npz",
        help="write the weights and factors (factor_0, factor_1, ...) to this .npz",
    )
    f.add_argument(
        "--init",
        choices=["svd", "random"],
        default="svd",
        help="initialisation (default %(default)s)",
    )
    fit_options(f, 500, 1e-8)
    common_options(f)
    f.set_defaults(func=_cmd_fit)

    s = sub.add_parser(
        "sweep",
        help="rank sweep of a tensor in a .npy file",
        description="Fit every rank of a range from several starts "
        "(cptensor.analysis.rank_sweep) and report fit, spread, "
        "core consistency (modes smaller than the rank merged), stability, "
        "degeneracy, whether each rank passes the rank rule and why, and the "
        "recommended rank: the largest swept rank that passes (the rule is "
        "printed with the result).",
    )
    tensor_argument(s)
    sweep_options(s, ranks_help="ranks to sweep, e.g. 1-8 or 1,2,4 (default %(default)s)", starts=5)
    s.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="also write sweep.json and the plot sweep.png to this directory",
    )
    fit_options(s, 500, 1e-8)
    common_options(s)
    s.set_defaults(func=_cmd_sweep)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m cptensor`` (``fit`` and ``sweep``).

    >>> build_parser().parse_args(["sweep", "x.npy", "--ranks", "1-4"]).ranks
    '1-4'
    """
    p = argparse.ArgumentParser(
        prog="python -m cptensor",
        description="CP tensor decompositions of tensors in .npy files (the cptensor console "
        "script offers these commands and the adapter ones).",
    )
    add_cp_commands(p.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True))
    return p


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen command; returns the exit status.

    Bad input (:class:`~cptensor.errors.CPTensorError`, :class:`CLIError`), file errors
    and missing optional packages end with one line on stderr and status 2 (set
    ``CPTENSOR_DEBUG=1`` for the traceback); any other exception is a bug and propagates
    with its traceback. A closed stdout (``| head``) ends quietly with 141.

    >>> run(build_parser(), ["sweep", "/nonexistent.npy"])
    2
    """
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return int(exc.code or 0)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with warnings.catch_warnings():
            if args.json or args.quiet:
                warnings.simplefilter("ignore")
            status = int(args.func(args))
            sys.stdout.flush()  # a closed pipe shows here, inside the handler below
            return status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head -1`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's exit flush stays quiet
        return 141
    except (CLIError, CPTensorError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError, ModuleNotFoundError) as exc:  # fmt: skip
        # bad input, file errors and missing optional packages: one line. Anything else is
        # a bug and keeps its traceback.
        if os.environ.get("CPTENSOR_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{PROG} {args.command}: error: {msg}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m cptensor``; returns the exit status (see :func:`run`).

    Examples
    --------
    >>> import json, tempfile, contextlib, io, os
    >>> import numpy as np
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "x.npy")
    ...     np.save(path, np.ones((3, 4, 5)))
    ...     buf = io.StringIO()
    ...     with contextlib.redirect_stdout(buf):
    ...         status = main(["fit", path, "--rank", "1", "--json", "--quiet"])
    >>> status, round(json.loads(buf.getvalue())["fit"], 6)
    (0, 1.0)
    """
    return run(build_parser(), argv)
