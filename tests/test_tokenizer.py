"""GPT-2's BPE (against tiktoken's own ``gpt2``) and the teaching tokenizer of Chapter 1."""
from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_companion.data.artifacts import fetch, get_artifact
from llm_companion.data.tokenizer import (
    ENDOFTEXT,
    GPT2_EOT_ID,
    UNK,
    SimpleTokenizer,
    UnknownTokenError,
    build_vocab,
    encode_text,
    gpt2_tokenizer,
    split_text,
)


@pytest.fixture(scope="module")
def tiktoken_gpt2(tmp_path_factory):
    """tiktoken's own ``gpt2`` encoding, loaded offline from its cache (files named by the sha1 of their URL)."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name in ("gpt2-encoder", "gpt2-vocab"):
        url = get_artifact(name).urls[0]
        shutil.copyfile(fetch(name), cache / hashlib.sha1(url.encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding("gpt2")
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


# ----------------------------------------------------------------------------------------- GPT-2 BPE
def test_gpt2_known_ids():
    enc = gpt2_tokenizer()
    assert enc.name == "gpt2"
    assert enc.n_vocab == 50257
    assert enc.encode("Hello, world") == [15496, 11, 995]
    assert enc.encode(ENDOFTEXT, allowed_special={ENDOFTEXT}) == [50256]
    assert enc.eot_token == 50256
    # an unknown word falls apart into known sub-words instead of becoming <|unk|>
    ids = enc.encode("Akwirw ier")
    assert [enc.decode([i]) for i in ids] == ["Ak", "w", "ir", "w", " ", "ier"]


def test_gpt2_is_cached():
    assert gpt2_tokenizer() is gpt2_tokenizer()


def test_gpt2_refuses_special_text_by_default():
    with pytest.raises(ValueError, match="disallowed special token"):
        gpt2_tokenizer().encode("a <|endoftext|> b")


def test_gpt2_identical_to_tiktoken(tiktoken_gpt2):
    ours = gpt2_tokenizer()
    assert ours._pat_str == tiktoken_gpt2._pat_str
    assert ours._special_tokens == tiktoken_gpt2._special_tokens
    assert ours._mergeable_ranks == tiktoken_gpt2._mergeable_ranks
    text = fetch("the-verdict").read_text(encoding="utf-8")
    assert ours.encode(text) == tiktoken_gpt2.encode(text)
    assert len(ours.encode(text)) == 5145  # SOURCES.md: the-verdict is 5145 GPT-2 tokens


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_gpt2_round_trip_and_parity(tiktoken_gpt2, text):
    enc = gpt2_tokenizer()
    ids = enc.encode(text, disallowed_special=())
    assert enc.decode(ids) == text
    assert ids == tiktoken_gpt2.encode(text, disallowed_special=())


# ----------------------------------------------------------------------------------- teaching tokenizer
def test_split_text_keeps_punctuation_and_specials():
    assert split_text("Hello, world. Is this-- a test?") == [
        "Hello", ",", "world", ".", "Is", "this", "--", "a", "test", "?"]
    assert split_text("end.<|endoftext|>Start") == ["end", ".", ENDOFTEXT, "Start"]


def test_build_vocab_sorted_with_specials_last():
    vocab = build_vocab("b a, c a")
    assert vocab == {",": 0, "a": 1, "b": 2, "c": 3, ENDOFTEXT: 4, UNK: 5}
    assert build_vocab(["x", "y", "x"], special_tokens=()) == {"x": 0, "y": 1}


def test_simple_tokenizer_on_the_verdict():
    text = fetch("the-verdict").read_text(encoding="utf-8")
    tok = SimpleTokenizer.from_text(text)
    assert len(tok) == 1130 + 2  # 1130 distinct words and punctuation marks, plus two special tokens
    s = '"It\'s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    ids = tok.encode(s)
    assert ids[:3] == [tok.str_to_int['"'], tok.str_to_int["It"], tok.str_to_int["'"]]
    # decode restores the spacing of punctuation except around the apostrophe, which splitting loses
    assert tok.decode(ids) == '" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride.'
    assert tok.encode(tok.decode(ids)) == ids


def test_simple_tokenizer_unknown_words_become_unk():
    tok = SimpleTokenizer.from_text("the cat sat on the mat.")
    ids = tok.encode("the dog sat. <|endoftext|> the cat")
    unk, eot = tok.str_to_int[UNK], tok.str_to_int[ENDOFTEXT]
    assert ids == [tok.str_to_int["the"], unk, tok.str_to_int["sat"], tok.str_to_int["."], eot,
                   tok.str_to_int["the"], tok.str_to_int["cat"]]
    assert tok.decode(ids) == "the <|unk|> sat. <|endoftext|> the cat"


def test_simple_tokenizer_without_unk_raises_a_clear_error():
    tok = SimpleTokenizer(build_vocab("the cat sat", special_tokens=(ENDOFTEXT,)))
    with pytest.raises(UnknownTokenError) as err:
        tok.encode("the dog sat")
    assert isinstance(err.value, KeyError)
    msg = str(err.value)
    assert "'dog'" in msg and UNK in msg and "build_vocab" in msg
    assert not msg.startswith('"')  # the message reads as a sentence, not a quoted repr


def test_simple_tokenizer_decode_unknown_id():
    tok = SimpleTokenizer.from_text("a b")
    with pytest.raises(UnknownTokenError, match="outside the vocabulary"):
        tok.decode([0, 99])


def test_simple_tokenizer_rejects_a_vocab_with_gaps():
    with pytest.raises(ValueError, match="build_vocab"):
        SimpleTokenizer({"a": 0, "b": 2})


_WORDS = ["the", "cat", "sat", "on", "mat", "It", "Mrs", ",", ".", "?", "!", "--", '"', "(", ")", ENDOFTEXT]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_WORDS + ["zebra", "Gisburn"]), max_size=30))
def test_simple_tokenizer_round_trip(words):
    tok = SimpleTokenizer.from_text(" ".join(_WORDS))
    ids = tok.encode(" ".join(words))
    # every known token maps to itself, every other word to <|unk|>
    assert [tok.int_to_str[i] for i in ids] == [w if w in _WORDS else UNK for w in words]
    assert tok.encode(tok.decode(ids)) == ids


def test_encode_text_has_one_rule_for_endoftext():
    enc, text = gpt2_tokenizer(), "a<|endoftext|>b"
    as_text = encode_text(enc, text)
    assert GPT2_EOT_ID not in as_text and enc.decode(as_text) == text  # typed by a user: ordinary characters
    assert encode_text(enc, text, endoftext_is_special=True) == enc.encode("a") + [GPT2_EOT_ID] + enc.encode("b")
    teaching = SimpleTokenizer.from_text(text)
    assert encode_text(teaching, text) == teaching.encode(text)  # no tiktoken options: called plainly
