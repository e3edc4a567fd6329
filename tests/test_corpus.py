import hashlib
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from llm_companion.data import corpus as corpus_mod
from llm_companion.data.artifacts import fetch
from llm_companion.data.corpus import (
    BOOKS_SHA256,
    VERDICT_PROBES,
    Corpus,
    Work,
    build_corpus,
    contains_verdict,
    corpus_tokens,
    split_tokens,
    strip_gutenberg,
)
from llm_companion.data.download import ArtifactUnavailable, mirror_dirs
from llm_companion.data.tokenizer import gpt2_tokenizer

START = "*** START OF THE PROJECT GUTENBERG EBOOK {t} ***"
END = "*** END OF THE PROJECT GUTENBERG EBOOK {t} ***"
VERDICT_IN_AN_EDITION = ("I HAD always thought Jack Gisburn rather a cheap genius—though a\r\ngood fellow "
                         "enough—so it was no great surprise to me.")


def book(title: str, body: str, *, start: bool = True, end: bool = True, this: bool = False) -> str:
    head = START.format(t=title).replace("THE PROJECT", "THIS PROJECT") if this else START.format(t=title)
    return ("Title: " + title + "\r\n\r\n" + (head + "\r\n" if start else "") + body
            + ("\r\n" + END.format(t=title) + "\r\nLicense text\r\n" if end else ""))


def make_archive(path: Path, files: dict[str, str], *, reverse: bool = False) -> Path:
    """A tar.xz like the mirror's: every file under a top folder ``Gutenberg_Text/``."""
    with tarfile.open(path, "w:xz") as tar:
        for name in sorted(files, reverse=reverse):
            data = files[name].encode("utf-8")
            info = tarfile.TarInfo(f"Gutenberg_Text/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


DICKENS = {
    "Dickens, Charles/Bleak House.txt": book("Bleak House", "London. Michaelmas term lately over.\r\n\r\nFog."),
    "Dickens, Charles/No Markers.txt": "Just text, no Gutenberg lines at all.",
    "Dickens, Charles/No End.txt": book("No End", "It begins and never ends.", end=False),
    "Dickens, Charles/Shared Volume.txt": book("Shared", "A story filed under two authors."),
}
MIXED = {
    "Austen, Jane/Emma.txt": book("Emma", "Emma Woodhouse, handsome, clever, and rich.", this=True),
    "Wharton, Edith/Stories.txt": book("Stories", "THE VERDICT\r\n\r\n" + VERDICT_IN_AN_EDITION),
    "Poe, Edgar Allan/Shared Volume.txt": book("Shared", "A story filed under two authors."),
}


@pytest.fixture
def archives(tmp_path):
    return [make_archive(tmp_path / "dickens.tar.xz", DICKENS), make_archive(tmp_path / "mixed.tar.xz", MIXED)]


def test_strip_keeps_only_the_text_between_the_marker_lines_with_unix_newlines():
    assert strip_gutenberg(book("X", "\r\n  Line one.\r\nLine two.  \r\n")) == "Line one.\nLine two."
    assert strip_gutenberg(book("X", "body", this=True)) == "body"
    assert strip_gutenberg(book("X", "body", start=False)) is None
    assert strip_gutenberg(book("X", "body", end=False)) is None


def test_builder_skips_files_lacking_a_marker_and_excludes_the_verdict(archives):
    c = build_corpus(archives)
    assert c.skipped == ["Dickens, Charles/No End.txt", "Dickens, Charles/No Markers.txt"]
    assert c.excluded == ["Wharton, Edith/Stories.txt"]
    assert [w.name for w in c.works] == ["Austen, Jane/Emma.txt", "Dickens, Charles/Bleak House.txt",
                                         "Dickens, Charles/Shared Volume.txt", "Poe, Edgar Allan/Shared Volume.txt"]
    assert c.works[1].text == "London. Michaelmas term lately over.\n\nFog."
    assert all("Gutenberg" not in t and "License" not in t for t in c.texts())


def test_an_exact_duplicate_stays_in_the_manifest_but_is_tokenized_once(archives):
    c = build_corpus(archives)
    assert c.duplicates == [("Poe, Edgar Allan/Shared Volume.txt", "Dickens, Charles/Shared Volume.txt")]
    assert c.texts().count("A story filed under two authors.") == 1
    shas = [line.split("  ")[0] for line in c.manifest().splitlines()]
    assert len(shas) == 4 and len(set(shas)) == 3


def test_verdict_rule_ignores_an_editions_dashes_line_breaks_and_case():
    assert contains_verdict(VERDICT_IN_AN_EDITION.upper())
    assert not contains_verdict("I had always thought Jack rather a cheap genius, though a good fellow enough")


def test_every_verdict_probe_occurs_in_the_verdict():
    text = fetch("the-verdict").read_text(encoding="utf-8")
    norm = corpus_mod._normalise(text)
    assert all(p in norm for p in VERDICT_PROBES)


def test_manifest_is_sha256sum_style_over_text_plus_newline(archives, tmp_path):
    c = build_corpus(archives)
    first = c.manifest().splitlines()[0]
    assert first == hashlib.sha256(b"Emma Woodhouse, handsome, clever, and rich.\n").hexdigest() + \
        "  Austen, Jane/Emma.txt"
    assert c.sha256 == hashlib.sha256(c.manifest().encode()).hexdigest()
    path = c.write_manifest(tmp_path / "out")
    assert path.read_bytes() == c.manifest().encode()
    assert (tmp_path / "out" / "corpus.json").is_file()


def test_digest_is_the_same_twice_and_independent_of_archive_and_member_order(archives, tmp_path):
    reordered = [make_archive(tmp_path / "m2.tar.xz", MIXED, reverse=True),
                 make_archive(tmp_path / "d2.tar.xz", DICKENS, reverse=True)]
    digests = {build_corpus(archives).sha256, build_corpus(archives).sha256, build_corpus(reordered).sha256}
    assert len(digests) == 1
    changed = make_archive(tmp_path / "d3.tar.xz", {**DICKENS, "Dickens, Charles/Bleak House.txt": book("B", "Fog!")})
    assert build_corpus([changed, archives[1]]).sha256 not in digests


def test_a_name_in_two_archives_is_refused(archives):
    with pytest.raises(corpus_mod.CorpusError, match="more than one archive"):
        build_corpus([archives[0], archives[0]])


def test_split_tokens_gives_each_works_head_to_training_and_tail_to_validation():
    tok = gpt2_tokenizer()
    texts = ["One two three four five six seven eight nine ten.", "Short <|endoftext|> text here, yes."]
    train, val = split_tokens(texts, tok, 0.3)
    eot = tok.eot_token
    ref_train, ref_val = [], []
    for text in texts:
        ids = tok.encode(text, disallowed_special=())  # <|endoftext|> inside a text is ordinary text
        cut = int(len(ids) * 0.7)
        ref_train += ids[:cut] + [eot]
        ref_val += ids[cut:] + [eot]
    assert train.dtype == np.uint16
    assert train.tolist() == ref_train and val.tolist() == ref_val
    assert eot not in tok.encode(texts[1], disallowed_special=())


def test_corpus_tokens_are_cached_by_corpus_digest(tmp_path, monkeypatch):
    c = Corpus(works=[Work("A/a.txt", "Some words for a tiny corpus, repeated. " * 20)])
    first = corpus_tokens(c, cache_dir=tmp_path, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{c.sha256[:16]}-val0.1-{s}.npy" for s in ("train", "val")]
    monkeypatch.setattr(corpus_mod, "split_tokens", lambda *a, **k: pytest.fail("re-tokenized a cached corpus"))
    again = corpus_tokens(c, cache_dir=tmp_path, verbose=False)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_mirror_only_archive_error_says_no_public_url_and_names_the_mirror_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_COMPANION_HOME", str(tmp_path))
    monkeypatch.setenv("LLM_COMPANION_MIRROR", str(tmp_path / "empty-mirror"))
    (tmp_path / "empty-mirror").mkdir()
    with pytest.raises(ArtifactUnavailable) as e:
        fetch("gutenberg-dickens")
    msg = str(e.value)
    assert "no public URL serves this exact file" in msg and "LLM_COMPANION_MIRROR" in msg
    assert "gutenberg_en_dickens.tar.xz" in msg and "d6c8aa41" in msg


@pytest.mark.slow
def test_books_corpus_reproduces_the_interim_standins_manifest():
    c = corpus_mod.books_corpus(verbose=False)  # raises unless the digest is BOOKS_SHA256
    assert c.sha256 == BOOKS_SHA256
    assert len(c.works) == 254 and c.characters == 98_207_804
    assert c.excluded == ["Wharton, Edith/The Early Short Fiction of Edith Wharton — Part 2.txt",
                          "Wharton, Edith/The Hermit and the Wild Woman, and Other Stories.txt"]
    assert [re.sub(r"^.*/", "", s) for s in c.skipped] == [
        "The Lock and Key Library: Classic Mystery and Detective Stories: Old Time English.txt",
        "The Lock and Key Library: The most interesting stories of all nations: American.txt"]
    # the excluded works really hold the story: its first and last 3,000 characters, as normalised text
    verdict = corpus_mod._normalise(fetch("the-verdict").read_text(encoding="utf-8")).strip()
    raw = corpus_mod.read_archive_texts([fetch("gutenberg-mixed")])
    for name in c.excluded:
        norm = corpus_mod._normalise(strip_gutenberg(raw[name].decode("utf-8")))
        assert verdict[:3000] in norm and verdict[-3000:] in norm, name
    published = [m / "models" / "books-gpt-mini-v0" / corpus_mod.MANIFEST for m in mirror_dirs()]
    assert any(f.is_file() for f in published), "the mirror's interim stand-in holds the manifest to compare"
    for f in published:
        if f.is_file():
            assert f.read_bytes() == c.manifest().encode("utf-8")


# ------------------------------------------------------------------------------ preparation v2 (unwrapped)
WRAPPED = ("CHAPTER I\n\n\n\n    It was a dark and stormy night;\nthe rain fell in torrents,\texcept at\n"
           "occasional intervals.\n   \n  “Who is there?”  he asked.\n")


def test_unwrap_joins_each_paragraphs_lines_and_keeps_one_blank_line_between_paragraphs():
    out = corpus_mod.unwrap_paragraphs(WRAPPED)
    assert out == ("CHAPTER I\n\nIt was a dark and stormy night; the rain fell in torrents, except at "
                   "occasional intervals.\n\n“Who is there?” he asked.")
    assert "  " not in out and "\n\n\n" not in out and not re.search(r"[^\n]\n[^\n]", out)
    assert corpus_mod._normalise(out) == corpus_mod._normalise(WRAPPED)  # no word or mark is lost
    assert corpus_mod.unwrap_paragraphs(out) == out                      # idempotent


def test_preparation_v1_is_the_text_as_filed_and_v2_changes_the_digest(archives):
    v1, v2 = build_corpus(archives), build_corpus(archives, preparation="v2")
    assert v1.preparation == "v1" and v2.preparation == "v2"
    assert v1.sha256 == build_corpus(archives, preparation="v1").sha256
    bleak = {w.name: w.text for w in v2.works}["Dickens, Charles/Bleak House.txt"]
    assert bleak == "London. Michaelmas term lately over.\n\nFog."  # already one line per paragraph
    wrapped = make_archive(archives[0].parent / "w.tar.xz", {"A/W.txt": book("W", WRAPPED.replace("\n", "\r\n"))})
    t1, t2 = (build_corpus([wrapped], preparation=p).works[0].text for p in ("v1", "v2"))
    assert t1 != t2 and t2 == corpus_mod.unwrap_paragraphs(t1)
    assert build_corpus([wrapped], preparation="v2").sha256 != build_corpus([wrapped]).sha256
    with pytest.raises(corpus_mod.CorpusError, match="preparations: v1, v2"):
        build_corpus(archives, preparation="v3")


def test_preparation_stats_count_whitespace_only_tokens():
    tok = gpt2_tokenizer()
    c = Corpus(works=[Work("A/a.txt", WRAPPED)])
    c2 = Corpus(works=[Work("A/a.txt", corpus_mod.unwrap_paragraphs(WRAPPED))], preparation="v2")
    stats = []
    for corpus in (c, c2):
        ids = np.asarray(tok.encode_ordinary(corpus.texts()[0]))
        by_hand = sum(tok.decode([int(i)]).isspace() for i in ids)
        s = corpus_mod.preparation_stats(corpus, ids, tok)
        assert s["whitespace_tokens"] == by_hand and s["tokens"] == len(ids)
        assert s["whitespace_share"] == pytest.approx(by_hand / len(ids))
        stats.append(s)
    assert stats[1]["whitespace_share"] < stats[0]["whitespace_share"] and stats[1]["preparation"] == "v2"


@pytest.mark.slow
def test_books_corpus_v2_has_its_pinned_digest_and_far_fewer_whitespace_tokens():
    c = corpus_mod.books_corpus(preparation="v2", verbose=False)  # raises unless BOOKS_V2_SHA256
    assert c.sha256 == corpus_mod.BOOKS_V2_SHA256 and len(c.works) == 254
    assert [w.name for w in c.works] == [w.name for w in corpus_mod.books_corpus(verbose=False).works]
