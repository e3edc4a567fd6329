"""Byte-level BPE training (llm_companion.data.bpe)."""
from collections import Counter

import pytest

from llm_companion.data.bpe import BPETrainingError, train_bpe


def naive_merges(text, n):
    """Reference: recount every pair from scratch at every step (the chapter's plain version)."""
    import regex

    from llm_companion.data.bpe import GPT2_SPLIT_PATTERN
    words = Counter(tuple(bytes([b]) for b in c.encode()) for c in regex.findall(GPT2_SPLIT_PATTERN, text))
    merges = []
    for _ in range(n):
        pairs = Counter()
        for w, k in words.items():
            for p in zip(w, w[1:], strict=False):
                pairs[p] += k
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        new = Counter()
        for w, k in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += k
        words = new
    return merges


def test_most_frequent_pair_is_merged_first():
    bpe = train_bpe("ab ab ab cd", 1)
    assert bpe.merges == [(b"a", b"b")]
    assert bpe.counts == [3]


def test_incremental_counts_match_recounting_from_scratch():
    text = "the theme of the thesis: aaaa aaa, banana bandana! 123 1234 " * 3
    assert train_bpe(text, 40).merges == naive_merges(text, 40)


def test_encode_decode_round_trip_and_compression():
    text = "low lower lowest newer newest wider " * 5
    bpe = train_bpe(text, 20)
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert len(ids) < len(text.encode())
    assert len(bpe.vocab) == 256 + len(bpe.merges)


def test_stops_when_every_chunk_is_one_token():
    bpe = train_bpe("aa aa", 100)
    assert len(bpe.merges) < 100
    assert len(bpe.encode("aa aa")) == 2


def test_bad_arguments_raise_a_specific_error():
    with pytest.raises(BPETrainingError):
        train_bpe("text", -1)
    with pytest.raises(BPETrainingError):
        train_bpe("", 3)
