"""The books corpus: Project Gutenberg archives turned, deterministically, into works ready to tokenize.

:func:`build_corpus` reads every ``.txt`` member of the given ``tar.xz`` archives and keeps, for each, the text
strictly between its ``*** START OF (THE|THIS) PROJECT GUTENBERG …`` and ``*** END OF …`` lines
(``\\r\\n`` made ``\\n``, stripped). It skips files lacking either line, excludes every work that contains *The Verdict*
(chapter 4's held-out story must stay unseen: see :data:`VERDICT_PROBES`). Works are ordered by their path
inside the archive (without the top folder), so the result does not depend on the order of the archives or
of their members.

The corpus is identified by the sha256 of its manifest (``CORPUS-MANIFEST.sha256``: one ``sha256  work``
line per work, the hash taken over the work's text plus a final newline), the digest the books stand-in
records. The manifest lists every work the archives hold, so an exact duplicate (the same text filed under
two authors) shows there as a repeated hash; training sees each distinct text once (:meth:`Corpus.texts`,
the first in path order). :func:`books_corpus` builds it from the two mirror archives; :func:`corpus_tokens`
tokenizes it once and caches the token ids as uint16 ``.npy`` files keyed by that digest.

Two preparations of a work's text exist (:data:`PREPARATIONS`), and the corpus digest depends on which:

* ``"v1"`` keeps the Gutenberg text as it is filed: a hard line break every ~70 characters, indentation,
  runs of blank lines (the books stand-in ``standin-books-8aa4a3f6af86`` learned from it);
* ``"v2"`` (:func:`unwrap_paragraphs`) joins the lines of each paragraph with one space, collapses every run
  of spaces, tabs and no-break spaces to one space (so indentation vanishes), and separates paragraphs by
  exactly one blank line. Kept: every word and punctuation mark, paragraph boundaries. Dropped: the line
  layout inside a paragraph, which also flattens verse and tables of contents into one line each.

:func:`preparation_stats` counts what a preparation changes (characters, tokens, whitespace-only tokens).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_companion.atomic import atomic_file
from llm_companion.data.artifacts import fetch
from llm_companion.data.download import data_dir
from llm_companion.data.tokenizer import gpt2_tokenizer
from llm_companion.progress import progress

BOOKS_ARCHIVES = ("gutenberg-dickens", "gutenberg-mixed")  # registry names (llm_companion.data.artifacts)
MANIFEST = "CORPUS-MANIFEST.sha256"
# The digest of the books corpus built from BOOKS_ARCHIVES (254 works, 98,207,804 characters); the interim
# books stand-in (mirror: models/books-gpt-mini-v0) was trained on exactly this corpus.
BOOKS_SHA256 = "4b50a076d874700399513776f9772077b25d0a8ec5a20edc8926695dbc5c450b"
# The same works prepared by :func:`unwrap_paragraphs` (preparation "v2": 96,660,528 characters tokenized,
# 24.0M tokens of which 2.8% whitespace-only, against v1's 97,724,668, 26.6M and 10.6%); recipe books-v2.
BOOKS_V2_SHA256 = "d7971c4a9a87887c4b51f045252d35f0702d214e0fc98e0f97642ba9ebf975c7"
BOOKS_DIGESTS = {"v1": BOOKS_SHA256, "v2": BOOKS_V2_SHA256}
PREPARATIONS = ("v1", "v2")

_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE)
_END = re.compile(r"^\*\*\* ?END OF .*$", re.MULTILINE)

# Passages of The Verdict (Edith Wharton, 1908; the book's chapter-4 text), compared after normalisation
# (:func:`_normalise`), so line breaks, dashes and quotes of an edition do not matter. A work containing any
# of them holds the story and is excluded. tests/test_corpus.py checks each occurs in the-verdict.txt.
VERDICT_PROBES = (
    "i had always thought jack gisburn rather a cheap genius though a good fellow enough",
    "the strouds stand alone and happen once but there s no exterminating our kind of art",
)


class CorpusError(ValueError):
    """A corpus that cannot be built as asked (no archives, no usable work, a digest that differs)."""


@dataclass(frozen=True)
class Work:
    """One book: ``name`` is its path inside the archive without the top folder (``Author/Title.txt``)."""

    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256((self.text + "\n").encode("utf-8")).hexdigest()

    @property
    def characters(self) -> int:
        return len(self.text)


@dataclass
class Corpus:
    """The works kept, in path order (the manifest), and what was left out: ``skipped`` (no Gutenberg
    markers), ``excluded`` (contains The Verdict); ``duplicates`` lists ``(work, same text as)`` for works
    whose text repeats an earlier one's: they stay in the manifest but :meth:`texts` drops them."""

    works: list[Work]
    skipped: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    preparation: str = "v1"

    def manifest(self) -> str:
        """``CORPUS-MANIFEST.sha256``'s text: ``<sha256>  <work>`` per line, ``sha256sum`` style."""
        return "".join(f"{w.sha256}  {w.name}\n" for w in self.works)

    @property
    def sha256(self) -> str:
        """The corpus digest: sha256 of :meth:`manifest`."""
        return hashlib.sha256(self.manifest().encode("utf-8")).hexdigest()

    @property
    def characters(self) -> int:
        return sum(w.characters for w in self.works)

    def texts(self) -> list[str]:
        """The distinct texts, in path order: what is tokenized (exact duplicates dropped)."""
        dropped = {name for name, _ in self.duplicates}
        return [w.text for w in self.works if w.name not in dropped]

    def summary(self) -> str:
        """One line per fact a reader checks: size, digest, and what was left out and why."""
        lines = [f"{len(self.works)} works ({self.preparation}), {self.characters:,} characters, "
                 f"corpus sha256 {self.sha256}",
                 f"{len(self.works) - len(self.duplicates)} distinct texts "
                 f"({sum(map(len, self.texts())):,} characters) are tokenized"]
        lines += [f"skipped (no START/END line): {n}" for n in self.skipped]
        lines += [f"excluded (contains The Verdict): {n}" for n in self.excluded]
        lines += [f"not tokenized (exact duplicate of {same}): {n}" for n, same in self.duplicates]
        return "\n".join(lines)

    def write_manifest(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/CORPUS-MANIFEST.sha256`` and ``folder/corpus.json`` (work, characters, sha256) atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(folder / MANIFEST) as tmp:
            Path(tmp).write_bytes(self.manifest().encode("utf-8"))
        table = {"sha256": self.sha256, "preparation": self.preparation, "characters": self.characters,
                 "skipped": self.skipped,
                 "excluded": self.excluded, "duplicates": self.duplicates,
                 "works": [{"work": w.name, "characters": w.characters, "sha256": w.sha256} for w in self.works]}
        with atomic_file(folder / "corpus.json") as tmp:
            Path(tmp).write_text(json.dumps(table, indent=1, ensure_ascii=False))
        return folder / MANIFEST


# --------------------------------------------------------------------------------------------- building
def strip_gutenberg(text: str) -> str | None:
    """The text strictly between the START and END lines, ``\\r\\n`` → ``\\n``, stripped; None without both."""
    text = text.replace("\r\n", "\n")
    start = _START.search(text)
    if start is None:
        return None
    end = _END.search(text, start.end())
    if end is None:
        return None
    return text[start.end():end.start()].strip()


_BLANK_LINE = re.compile(r"\n[ \t\u00a0]*\n")       # a paragraph break: a line holding only blanks
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")  # any run of horizontal whitespace


def unwrap_paragraphs(text: str) -> str:
    """Preparation v2 of one work: each paragraph on one line, single spaces, one blank line between paragraphs.

    >>> unwrap_paragraphs("  It was a dark\\n  and stormy night;\\n \\n\\n\\n    the rain fell.  ")
    'It was a dark and stormy night;\\n\\nthe rain fell.'
    """
    paragraphs = (_SPACES.sub(" ", " ".join(p.split("\n"))).strip() for p in _BLANK_LINE.split(text))
    return "\n\n".join(p for p in paragraphs if p)


def prepare(text: str, preparation: str) -> str:
    """A work's Gutenberg-stripped text as ``preparation`` (``"v1"``: unchanged; ``"v2"``: unwrapped)."""
    if preparation == "v1":
        return text
    if preparation == "v2":
        return unwrap_paragraphs(text)
    raise CorpusError(f"unknown corpus preparation {preparation!r}; preparations: {', '.join(PREPARATIONS)}")


def _normalise(text: str) -> str:
    """Lower case, every run of non-alphanumerics one space: editions' punctuation and line breaks vanish."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower())


def contains_verdict(text: str) -> bool:
    """True when ``text`` holds one of :data:`VERDICT_PROBES` (the story The Verdict)."""
    norm = _normalise(text)
    return any(p in norm for p in VERDICT_PROBES)


def read_archive_texts(archives: Iterable[str | os.PathLike]) -> dict[str, bytes]:
    """``{work name: bytes}`` of every ``.txt`` member of the ``tar.xz`` archives (name without the top folder)."""
    out: dict[str, bytes] = {}
    for archive in archives:
        with tarfile.open(archive, "r:xz") as tar:
            for member in tar:
                if not (member.isfile() and member.name.endswith(".txt")):
                    continue
                name = member.name.split("/", 1)[1] if "/" in member.name else member.name
                if name in out:
                    raise CorpusError(f"{name!r} occurs in more than one archive; give each archive once")
                out[name] = tar.extractfile(member).read()
    return out


def build_corpus(archives: Sequence[str | os.PathLike], *, preparation: str = "v1",
                 verbose: bool = False) -> Corpus:
    """Build the :class:`Corpus` of ``archives`` (see the module docstring for the rules and preparations)."""
    prepare("", preparation)  # an unknown preparation fails before the archives are read
    if not archives:
        raise CorpusError("build_corpus needs at least one tar.xz archive")
    raw = read_archive_texts(archives)
    corpus = Corpus(works=[], preparation=preparation)
    seen: dict[str, str] = {}  # text sha256 -> first work with it
    for name in progress(sorted(raw), desc="corpus", unit="work", disable=not verbose):
        text = strip_gutenberg(raw[name].decode("utf-8"))
        if text is None:
            corpus.skipped.append(name)
            continue
        if contains_verdict(text):
            corpus.excluded.append(name)
            continue
        work = Work(name, prepare(text, preparation))
        if work.sha256 in seen:
            corpus.duplicates.append((name, seen[work.sha256]))
        seen.setdefault(work.sha256, name)
        corpus.works.append(work)
    if not corpus.works:
        raise CorpusError(f"no usable work in {', '.join(map(str, archives))} (every file lacked the "
                          f"Project Gutenberg START/END lines or was excluded)")
    return corpus


def books_corpus(*, preparation: str = "v1", verbose: bool = True) -> Corpus:
    """The books corpus from the two mirror archives as ``preparation``, checked against :data:`BOOKS_DIGESTS`."""
    corpus = build_corpus([fetch(name) for name in BOOKS_ARCHIVES], preparation=preparation, verbose=verbose)
    expected = BOOKS_DIGESTS[preparation]
    if corpus.sha256 != expected:
        raise CorpusError(f"the books corpus ({preparation}) has digest {corpus.sha256}, expected {expected}; "
                          f"the archives verified, so the corpus rules in llm_companion/data/corpus.py changed")
    return corpus


# ------------------------------------------------------------------------------------------- tokenizing
def split_tokens(texts: Sequence[str], tokenizer, val_fraction: float, *,
                 verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of the training and validation splits (uint16 arrays when the vocabulary fits).

    The one split rule of pretraining: each text's first ``1 - val_fraction`` of tokens goes to training, the
    rest (its tail) to validation, each part followed by ``<|endoftext|>``, so both splits hold every source.
    ``<|endoftext|>`` inside a text is ordinary text.
    """
    eot = tokenizer.eot_token
    dtype = np.uint16 if tokenizer.n_vocab <= 1 << 16 else np.int32
    train_parts: list[np.ndarray] = []
    val_parts: list[np.ndarray] = []
    end = np.array([eot], dtype=dtype)
    for text in progress(texts, desc="tokenizing", unit="work", disable=not verbose):
        ids = np.asarray(tokenizer.encode_ordinary(text), dtype=dtype)
        cut = int(len(ids) * (1 - val_fraction))
        train_parts += [ids[:cut], end]
        val_parts += [ids[cut:], end]
    return np.concatenate(train_parts), np.concatenate(val_parts)


def corpus_tokens(corpus: Corpus, *, val_fraction: float = 0.1, cache_dir: str | os.PathLike | None = None,
                  verbose: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """GPT-2 token ids of ``corpus``'s training and validation splits, cached under ``cache_dir``
    (default ``data/corpora/tokens/``) as ``<corpus sha256[:16]>-val<fraction>-{train,val}.npy``."""
    folder = Path(cache_dir) if cache_dir is not None else data_dir() / "corpora" / "tokens"
    stem = f"{corpus.sha256[:16]}-val{val_fraction:g}"
    files = [folder / f"{stem}-{split}.npy" for split in ("train", "val")]
    if all(f.is_file() for f in files):
        try:
            return tuple(np.load(f, allow_pickle=False) for f in files)  # type: ignore[return-value]
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    arrays = split_tokens(corpus.texts(), gpt2_tokenizer(), val_fraction, verbose=verbose)
    folder.mkdir(parents=True, exist_ok=True)
    for f, a in zip(files, arrays, strict=True):
        with atomic_file(f) as tmp, open(tmp, "wb") as out:
            np.save(out, a, allow_pickle=False)
    return arrays


def whitespace_token_ids(tokenizer) -> np.ndarray:
    """The ids of every token that decodes to whitespace only (``" "``, ``"\\n"``, runs of spaces, …)."""
    ids = []
    for i in range(tokenizer.n_vocab):
        try:
            piece = tokenizer.decode_single_token_bytes(i)
        except KeyError:
            continue
        if piece and piece.isspace():
            ids.append(i)
    return np.asarray(ids)


def preparation_stats(corpus: Corpus, tokens: np.ndarray, tokenizer) -> dict:
    """What a preparation leaves: ``works``, ``characters`` (distinct texts), ``tokens`` (both splits, with
    their end-of-text markers), ``whitespace_tokens`` and ``whitespace_share`` (whitespace-only tokens)."""
    white = int(np.isin(tokens, whitespace_token_ids(tokenizer)).sum())
    return {"preparation": corpus.preparation, "sha256": corpus.sha256, "works": len(corpus.texts()),
            "characters": sum(map(len, corpus.texts())), "tokens": int(len(tokens)),
            "whitespace_tokens": white, "whitespace_share": white / max(1, len(tokens))}


# ------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``python -m llm_companion.data.corpus [--preparation v1|v2] [--stats] [OUT]``: build the books corpus,
    print its summary (``--stats``: also tokens and the share of whitespace tokens), write its manifest to OUT."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m llm_companion.data.corpus", description=main.__doc__)
    p.add_argument("out", nargs="?", help="folder for CORPUS-MANIFEST.sha256 and corpus.json")
    p.add_argument("--preparation", choices=PREPARATIONS, default="v1")
    p.add_argument("--stats", action="store_true", help="tokenize (cached) and count whitespace tokens")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    corpus = build_corpus([fetch(name) for name in BOOKS_ARCHIVES], preparation=args.preparation, verbose=True)
    print(corpus.summary())
    if args.stats:
        tokens = np.concatenate(corpus_tokens(corpus))
        print(json.dumps(preparation_stats(corpus, tokens, gpt2_tokenizer()), indent=1))
    if args.out:
        print(f"manifest: {corpus.write_manifest(args.out)}")
    return 0 if corpus.sha256 == BOOKS_DIGESTS[args.preparation] else 1


if __name__ == "__main__":
    raise SystemExit(main())
