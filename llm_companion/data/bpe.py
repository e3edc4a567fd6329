"""Training a byte-level byte-pair encoding (BPE), the way GPT-2's vocabulary was learned.

Chapter 1 derives the algorithm in plain Python; this module is the reusable version. Text is first cut
into chunks by GPT-2's pre-tokenizer regex (so merges never cross a word boundary), each chunk starts as
its UTF-8 bytes, and each step merges the most frequent adjacent pair into a new token. The merges, in the
order learned, are the tokenizer: encoding replays them by rank.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import regex

# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, whitespace (tiktoken's "gpt2" pattern)
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class BPETrainingError(ValueError):
    """Raised for arguments of :func:`train_bpe` that cannot work."""


@dataclass
class BPEMerges:
    """The result of :func:`train_bpe`: merges in the order learned, and the pair counts that chose them.

    ``merges[r]`` is the pair merged at step ``r`` (its rank); ``counts[r]`` how often that pair occurred
    when it was chosen. ``vocab`` lists the 256 single bytes followed by one token per merge, so a token's
    id is its index, as in GPT-2's vocabulary.
    """

    merges: list[tuple[bytes, bytes]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @property
    def vocab(self) -> list[bytes]:
        return [bytes([b]) for b in range(256)] + [a + b for a, b in self.merges]

    def encode(self, text: str, pattern: str = GPT2_SPLIT_PATTERN) -> list[int]:
        """Token ids of ``text``: per chunk, repeatedly merge the adjacent pair with the lowest rank."""
        ranks = {pair: r for r, pair in enumerate(self.merges)}
        ids = {tok: i for i, tok in enumerate(self.vocab)}
        out: list[int] = []
        for chunk in regex.findall(pattern, text):
            parts = [bytes([b]) for b in chunk.encode("utf-8")]
            while len(parts) > 1:
                pairs = zip(parts, parts[1:], strict=False)
                ranked = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(pairs)]
                rank, i = min(ranked)
                if rank == len(ranks):  # no adjacent pair was ever merged
                    break
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
            out.extend(ids[p] for p in parts)
        return out

    def decode(self, ids: list[int]) -> str:
        vocab = self.vocab
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def _merge_word(word: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe(text: str, num_merges: int, pattern: str = GPT2_SPLIT_PATTERN) -> BPEMerges:
    """Learn ``num_merges`` byte-pair merges from ``text`` (fewer if every chunk becomes one token).

    Each step merges the most frequent adjacent pair, counted over all chunks weighted by how often each
    chunk occurs; ties go to the smallest pair in byte order, so the result is deterministic. Only the
    chunks that contain the chosen pair are rewritten, and the pair counts are updated for those alone.
    """
    if num_merges < 0:
        raise BPETrainingError(f"num_merges must be >= 0, got {num_merges}")
    words: Counter[tuple[bytes, ...]] = Counter(
        tuple(bytes([b]) for b in chunk.encode("utf-8")) for chunk in regex.findall(pattern, text))
    if not words:
        raise BPETrainingError("the text has no characters to learn merges from; pass a non-empty text")
    pairs: Counter[tuple[bytes, bytes]] = Counter()
    for word, n in words.items():
        for pair in zip(word, word[1:], strict=False):
            pairs[pair] += n
    result = BPEMerges()
    for _ in range(num_merges):
        pairs = +pairs  # drop pairs whose count fell to zero
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        result.merges.append(best)
        result.counts.append(pairs[best])
        for word in [w for w in words if best[0] in w and best[1] in w]:
            new = _merge_word(word, best)
            if new == word:
                continue
            n = words.pop(word)
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] -= n
            for pair in zip(new, new[1:], strict=False):
                pairs[pair] += n
            words[new] += n
    return result
