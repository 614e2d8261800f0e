"""Small labelled text datasets for the demo and the SST-2 benchmark.

Two sources, both read from local files (nothing is downloaded):

- the **VADER sentiment lexicon** that the ``vaderSentiment`` package installs
  (``vader_lexicon.txt``: about 7,500 words and emoticons, each with the mean of ten human
  valence ratings); the label is the sign of the mean rating (1 = positive), entries with
  a mean of exactly zero are dropped, and a fixed, seeded split holds out a test set;
- **GLUE SST-2** from a directory holding ``train.tsv`` and ``dev.tsv`` (tab-separated,
  header ``sentence<TAB>label``); the dev set is the test set.

>>> split = load_vader(test_fraction=0.2, seed=0)
>>> len(split.test), sorted(set(split.train.labels))
(1501, [0, 1])
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cptensor.errors import CPTensorError

__all__ = [
    "DataSplit",
    "TextDataset",
    "default_glue_dir",
    "load_sst2",
    "load_vader",
    "vader_lexicon_path",
]

GLUE_DIR_ENV = "CPTENSOR_GLUE_DIR"


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer class labels (immutable).

    Parameters
    ----------
    texts : tuple of str
        The inputs.
    labels : tuple of int
        One label per text (0 or 1 here).
    name : str
        A short description used in reports.

    Examples
    --------
    >>> d = TextDataset(("good", "bad"), (1, 0), "toy")
    >>> len(d), d.subset([1]).texts
    (2, ('bad',))
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise CPTensorError(
                f"texts and labels must have the same length; got {len(self.texts)} texts "
                f"and {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> TextDataset:
        """The examples at ``indices`` (a new dataset, in that order)."""
        idx = [int(i) for i in indices]
        return TextDataset(
            tuple(self.texts[i] for i in idx), tuple(self.labels[i] for i in idx), self.name
        )

    def head(self, n: int) -> TextDataset:
        """The first ``n`` examples (all of them when ``n`` exceeds the length)."""
        return self.subset(range(min(int(n), len(self))))

    @property
    def positive_fraction(self) -> float:
        """The fraction of examples labelled 1."""
        return float(np.mean(self.labels)) if self.labels else 0.0


@dataclass(frozen=True)
class DataSplit:
    """A training set and a held-out test set."""

    train: TextDataset
    test: TextDataset


def vader_lexicon_path() -> Path:
    """The path of ``vader_lexicon.txt`` inside the installed ``vaderSentiment`` package.

    Raises
    ------
    ModuleNotFoundError
        When ``vaderSentiment`` is not installed (``pip install vadersentiment``).
    FileNotFoundError
        When the package lacks the lexicon file.

    Examples
    --------
    >>> vader_lexicon_path().name
    'vader_lexicon.txt'
    """
    try:
        import vaderSentiment
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "the VADER lexicon needs the 'vadersentiment' package: pip install vadersentiment"
        ) from exc
    path = Path(vaderSentiment.__file__).resolve().parent / "vader_lexicon.txt"
    if not path.is_file():  # pragma: no cover - broken installation
        raise FileNotFoundError(
            f"vader_lexicon.txt not found in the vaderSentiment package: {path}"
        )
    return path


def load_vader(*, test_fraction: float = 0.2, seed: int = 0) -> DataSplit:
    """The VADER lexicon as a binary sentiment task with a fixed held-out split.

    Each line of the lexicon is ``token<TAB>mean<TAB>std<TAB>[ten ratings]``; the label is
    1 when the mean rating is positive and 0 when it is negative; tokens whose mean is
    exactly zero are dropped. Fourteen tokens appear twice in the file: the first entry
    is kept, and the two whose entries disagree in sign (``d:``, ``d=``) are dropped, so
    no token is both in the training and the held-out set (7,504 entries remain). The
    split is a seeded permutation: the same ``seed`` and
    ``test_fraction`` always give the same split.

    Parameters
    ----------
    test_fraction : float
        Share of the entries held out, in (0, 1).
    seed : int
        Seed of the permutation.

    Returns
    -------
    DataSplit

    Examples
    --------
    >>> s = load_vader(seed=0)
    >>> 7000 < len(s.train) + len(s.test) < 8000
    True
    >>> s.test.texts[:3] == load_vader(seed=0).test.texts[:3]
    True
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise CPTensorError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
    first: dict[str, int] = {}  # token -> label of its first entry; -1 when entries disagree
    with open(vader_lexicon_path(), encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise CPTensorError(
                    f"vader_lexicon.txt line {lineno}: expected tab-separated fields"
                )
            mean = float(parts[1])
            if mean == 0.0:
                continue
            label = 1 if mean > 0 else 0
            if parts[0] in first and first[parts[0]] != label:
                first[parts[0]] = -1
            first.setdefault(parts[0], label)
    texts = [t for t, y in first.items() if y >= 0]
    labels = [first[t] for t in texts]
    order = np.random.default_rng(seed).permutation(len(texts))
    n_test = max(1, round(len(texts) * float(test_fraction)))
    full = TextDataset(tuple(texts), tuple(labels), "VADER lexicon")
    return DataSplit(
        train=_renamed(full.subset(order[n_test:]), "VADER lexicon (train)"),
        test=_renamed(full.subset(order[:n_test]), "VADER lexicon (held out)"),
    )


def default_glue_dir() -> Path | None:
    """Where the GLUE SST-2 files are expected, or None when they are not there.

    ``$CPTENSOR_GLUE_DIR`` when set, else ``../shared/data/glue/SST-2`` beside the
    repository checkout that holds this package.

    Examples
    --------
    >>> p = default_glue_dir()
    >>> p is None or (p / "dev.tsv").is_file()
    True
    """
    env = os.environ.get(GLUE_DIR_ENV)
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[1]
    candidates.append(repo.parent / "shared" / "data" / "glue" / "SST-2")
    for c in candidates:
        if (c / "train.tsv").is_file() and (c / "dev.tsv").is_file():
            return c
    return None


def _read_glue_tsv(path: Path) -> TextDataset:
    texts: list[str] = []
    labels: list[int] = []
    lineno = 1
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None or "sentence" not in header or "label" not in header:
                raise CPTensorError(
                    f"{path}: expected a header with columns 'sentence' and 'label'; got {header!r}"
                )
            si, li = header.index("sentence"), header.index("label")
            for lineno, row in enumerate(reader, 2):
                if not row:
                    continue
                if len(row) <= max(si, li) or row[li].strip() not in ("0", "1"):
                    raise CPTensorError(
                        f"{path} line {lineno}: expected a sentence and a label 0 or 1, got "
                        f"{row[:3]!r}"
                    )
                texts.append(row[si].strip())
                labels.append(int(row[li]))
    except csv.Error as exc:  # e.g. a field over csv's size limit
        raise CPTensorError(f"{path} line {lineno + 1}: {exc}") from None
    except UnicodeDecodeError:
        raise CPTensorError(f"{path}: not UTF-8 text") from None
    return TextDataset(tuple(texts), tuple(labels), f"SST-2 {path.stem}")


def load_sst2(
    glue_dir: str | os.PathLike[str], *, train_size: int | None = None, seed: int = 0
) -> DataSplit:
    """GLUE SST-2 from a directory with ``train.tsv`` and ``dev.tsv``.

    Parameters
    ----------
    glue_dir : path
        The SST-2 directory (the one holding the two files).
    train_size : int, optional
        Keep a fixed, seeded random subset of this many training sentences (all when None).
    seed : int
        Seed of that subset.

    Returns
    -------
    DataSplit
        ``train`` and ``test`` (= the dev set, whose labels GLUE publishes).

    Raises
    ------
    FileNotFoundError
        Naming the missing file(s) and the directory searched.

    Examples
    --------
    >>> load_sst2("/nonexistent")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    FileNotFoundError: ...
    """
    d = Path(glue_dir)
    missing = [n for n in ("train.tsv", "dev.tsv") if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"glue_dir {str(d)!r} lacks {' and '.join(missing)}; expected the GLUE SST-2 "
            "directory with train.tsv and dev.tsv (columns 'sentence', 'label')"
        )
    train = _read_glue_tsv(d / "train.tsv")
    dev = _read_glue_tsv(d / "dev.tsv")
    if train_size is not None:
        if int(train_size) < 1:
            raise CPTensorError(f"train_size must be a positive integer; got {train_size!r}")
        order = np.random.default_rng(seed).permutation(len(train))[: int(train_size)]
        train = train.subset(np.sort(order))
    return DataSplit(_renamed(train, "SST-2 train"), _renamed(dev, "SST-2 dev"))


def _renamed(d: TextDataset, name: str) -> TextDataset:
    return TextDataset(d.texts, d.labels, name)
