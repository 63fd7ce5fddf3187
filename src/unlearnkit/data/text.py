"""Character-level text data: a vocabulary, next-character windows, and two local corpora.

* :class:`CharVocab` maps characters to indices ``0 .. len(vocab) - 1`` and back.
* :func:`char_windows` turns an encoded text into a next-character classification
  :class:`~unlearnkit.data.Dataset` (the data of :class:`~unlearnkit.models.lstm.CharLSTM`).
* :func:`python_docs_excerpt` is a fixed ~120,000-character excerpt of Python's own
  documentation, shipped with unlearnkit so that every run trains on the same text.
* :func:`load_fortunes` reads the quotations of Debian's ``fortunes`` package, with their
  categories and attributions (text to plant and forget, grouped by author or category).

Nothing is downloaded.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from unlearnkit.data.dataset import Dataset
from unlearnkit.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "PYDOC_TOPICS",
    "CharVocab",
    "Quote",
    "attribution_name",
    "char_windows",
    "load_fortunes",
    "python_docs_excerpt",
]


# ------------------------------------------------------------------------------ vocabulary


@dataclass(frozen=True)
class CharVocab:
    """The characters of a text, in a fixed order: character ``chars[k]`` has index ``k``.

    Parameters
    ----------
    chars:
        The distinct characters, each once; :meth:`from_text` sorts them.
    """

    chars: str
    _index: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.chars, str) or not self.chars:
            raise DataError(f"CharVocab needs a non-empty string of characters; got {self.chars!r}.")
        if len(set(self.chars)) != len(self.chars):
            dups = sorted({c for c in self.chars if self.chars.count(c) > 1})
            raise DataError(f"CharVocab characters must be distinct; repeated: {''.join(dups)!r}.")
        object.__setattr__(self, "_index", {c: k for k, c in enumerate(self.chars)})

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        """The vocabulary of ``text``: its distinct characters, sorted by code point."""
        if not text:
            raise DataError("Cannot build a vocabulary from an empty text.")
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """``text`` as a 1-D ``int64`` array of character indices; a character outside the vocabulary raises :class:`DataError`."""
        index = self._index
        try:
            return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError:
            unknown = sorted(set(text) - set(self.chars))
            first = min(text.index(c) for c in unknown)
            raise DataError(
                f"{len(unknown)} character(s) not in the vocabulary: {''.join(unknown)!r} (first at position {first}). "
                "Build the vocabulary from text that contains them, or remove them first."
            ) from None

    def decode(self, codes) -> str:
        """The text of a 1-D array of character indices (inverse of :meth:`encode`)."""
        codes = np.asarray(codes)
        if codes.ndim != 1:
            raise DataError(f"decode needs a 1-D array of character indices; got shape {codes.shape}.")
        if codes.size and (not np.all(np.equal(np.mod(codes, 1), 0)) or codes.min() < 0 or codes.max() >= len(self)):
            raise DataError(f"decode needs integer indices in [0, {len(self)}); got values in [{codes.min()}, {codes.max()}].")
        chars = self.chars
        return "".join(chars[int(k)] for k in codes)


def char_windows(text_codes: np.ndarray, window: int, *, name: str = "text", vocab_size: int) -> Dataset:
    """Every next-character example of an encoded text, as a :class:`Dataset`.

    For codes ``c_0 .. c_{n-1}`` there is one row per position ``i = window .. n-1``: features
    ``c_{i-window} .. c_{i-1}`` (as ``float32``), label ``c_i`` and row id ``i``, the position
    of the predicted character in the text (so forgetting a span of the text is forgetting
    the ids in that span). ``n_classes = vocab_size``.

    Parameters
    ----------
    text_codes:
        1-D integer array of character indices in ``[0, vocab_size)``, longer than ``window``.
    window:
        Characters of context per row, at least 1.
    name:
        The data set's name.
    vocab_size:
        Number of characters (e.g. ``len(vocab)``).
    """
    codes = np.asarray(text_codes)
    window = int(window)
    if codes.ndim != 1 or (codes.size and not np.issubdtype(codes.dtype, np.integer)):
        raise DataError(f"{name}: text_codes must be a 1-D integer array (CharVocab.encode); got {codes.dtype} of shape {codes.shape}.")
    if window < 1:
        raise DataError(f"{name}: window must be >= 1, got {window}.")
    if codes.size <= window:
        raise DataError(f"{name}: a text of {codes.size} characters has no {window}-character window followed by a character.")
    if not 1 <= vocab_size <= 2 ** 24:
        raise DataError(f"{name}: vocab_size must be in [1, 2**24] (codes are stored as float32); got {vocab_size}.")
    if codes.min() < 0 or codes.max() >= vocab_size:
        raise DataError(f"{name}: character indices must lie in [0, {vocab_size}); got [{codes.min()}, {codes.max()}].")
    X = np.lib.stride_tricks.sliding_window_view(codes, window)[:-1].astype(np.float32)
    ids = np.arange(window, codes.size, dtype=np.int64)
    return Dataset(X, codes[window:].astype(np.int64), ids, n_classes=int(vocab_size), name=name)


# ------------------------------------------------------------------------------ Python docs

PYDOC_TOPICS: tuple[str, ...] = (
    "customization", "attribute-access", "debugger", "typesmapping", "assignment", "comparisons",
    "execmodel", "import", "calls", "sequence-types", "function", "try",
)
"""The ``pydoc_data.topics`` entries the excerpt is made of, in order (prose-heavy, none contained in another)."""

_CORPUS_FILE = "pydoc_topics.txt"
_ASCII_PUNCTUATION = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                                    "\u2014": "-", "\u2026": "..."})


@functools.lru_cache(maxsize=1)
def python_docs_excerpt() -> str:
    """A fixed excerpt of Python's documentation (121,869 characters, 64 distinct).

    The topics :data:`PYDOC_TOPICS` of ``pydoc_data.topics`` (CPython 3.11.7, PSF licence),
    each lower-cased, typographic quotes and dashes made ASCII (``'``, ``"``, ``-``, ``...``),
    every run of whitespace collapsed to one space and any other character outside printable
    ASCII dropped, joined by single spaces. It is read from
    ``unlearnkit/data/corpus/pydoc_topics.txt`` (not rebuilt from the running Python, whose
    documentation differs between versions), so it is the same text everywhere.
    """
    text = resources.files("unlearnkit.data").joinpath("corpus").joinpath(_CORPUS_FILE).read_text(encoding="ascii")
    return text.rstrip("\n")


def _build_python_docs_excerpt(topics: tuple[str, ...] = PYDOC_TOPICS) -> str:
    """Rebuild the excerpt from the running Python's ``pydoc_data`` (how the shipped file was made)."""
    from pydoc_data.topics import topics as docs

    def clean(s: str) -> str:
        s = re.sub(r"\s+", " ", s.lower().translate(_ASCII_PUNCTUATION))
        return "".join(c for c in s if " " <= c <= "~").strip()

    return " ".join(clean(docs[name]) for name in topics)


# ------------------------------------------------------------------------------ fortunes

FORTUNES_ROOT = "/usr/share/games/fortunes"


@dataclass(frozen=True)
class Quote:
    """One ``fortune`` entry.

    Attributes
    ----------
    text:
        The whole entry as written (quotation and attribution lines, without the ``%`` separators).
    category:
        The file it comes from (``"literature"``, ``"science"``, ...).
    attribution:
        The text after ``-- `` on the entry's trailing attribution line (continuation lines
        joined with single spaces, editorial ``[...]`` notes after it left out), or ``""``.
    """

    text: str
    category: str
    attribution: str


def _fortune_categories(root: Path) -> list[str]:
    return sorted(
        p.name for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix not in (".dat", ".u8")
    )


def load_fortunes(categories=None, *, root: str | Path = FORTUNES_ROOT) -> list[Quote]:
    """The quotations of Debian's ``fortunes`` files, as :class:`Quote` s.

    Each category file holds entries separated by lines consisting of ``%``; empty entries
    are skipped, and so are the ``.dat`` index files, the ``.u8`` links and sub-directories
    (the offensive ``off/`` set). Files are decoded as UTF-8 with undecodable bytes replaced
    (a few are Latin-1). Quotes come in sorted category order, then file order.

    Parameters
    ----------
    categories:
        Category names (file names) to read, or a single name; ``None`` reads all of them.
    root:
        The fortunes directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"No fortunes directory at {root}; install Debian's fortunes package: apt-get install -y fortunes "
            "(or pass root= where the files are)."
        )
    available = _fortune_categories(root)
    if categories is None:
        chosen = available
    else:
        chosen = sorted({categories} if isinstance(categories, str) else set(categories))
        missing = [c for c in chosen if c not in available]
        if missing:
            raise DataError(f"Unknown fortunes categories {missing}; available in {root}: {', '.join(available) or 'none'}.")
    quotes: list[Quote] = []
    for category in chosen:
        text = (root / category).read_bytes().decode("utf-8", errors="replace")
        entry: list[str] = []
        for line in text.splitlines() + ["%"]:
            if line.strip() != "%":
                entry.append(line)
                continue
            body = "\n".join(entry).strip("\n")
            entry = []
            if body.strip():
                quotes.append(Quote(body, category, _attribution(body)))
    logger.debug("loaded %d fortunes from %d categories in %s", len(quotes), len(chosen), root)
    return quotes


def _attribution(entry: str) -> str:
    """The text after ``-- `` on the entry's trailing attribution line(s), or ``""``.

    The attribution line is the last line that starts (after indentation) with ``-- ``; it
    counts only if it is not the entry's first line (an entry that starts with ``-- `` is a
    list of such items) and every line after it is a non-blank continuation indented at
    least as deep, apart from an editorial note in ``[...]`` at the very end.
    """
    lines = entry.rstrip().split("\n")
    if lines[0].lstrip().startswith("-- "):
        return ""
    dashes = [k for k in range(1, len(lines)) if lines[k].lstrip().startswith("-- ")]
    if not dashes:
        return ""
    head, tail = lines[dashes[-1]], lines[dashes[-1] + 1:]
    if tail and tail[-1].rstrip().endswith("]"):  # drop a trailing "[... Ed.]" note
        starts = [j for j, t in enumerate(tail) if t.lstrip().startswith("[")]
        if starts:
            tail = tail[:starts[-1]]
            while tail and not tail[-1].strip():
                tail.pop()
    depth = _indent(head)
    if not all(t.strip() and _indent(t) >= depth for t in tail):
        return ""
    return " ".join(" ".join([head.lstrip()[3:], *tail]).split())


def _indent(line: str) -> int:
    return len(line.expandtabs(8)) - len(line.expandtabs(8).lstrip())


def attribution_name(attribution: str) -> str:
    """The person in an attribution: the text before the first comma, double quote, ``(`` or ``[``, stripped.

    ``'Mark Twain, "The Disappearance of Literature"'`` gives ``"Mark Twain"``;
    ``"Oscar Wilde [as he sipped champagne on his deathbed]"`` gives ``"Oscar Wilde"``.
    """
    return re.split(r"[,\"(\[]", attribution, maxsplit=1)[0].strip()
