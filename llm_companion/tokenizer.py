"""Tokenizers: the teaching word-level tokenizer of Chapter 1 and GPT-2's byte-pair encoding.

``SimpleTokenizer`` is the tokenizer Chapter 1 derives: split text with a regular expression, give every
distinct token an id, and map words outside the vocabulary to ``<|unk|>``. ``gpt2_tokenizer()`` is the real
thing: tiktoken's ``gpt2`` encoding, built from the verified ``encoder.json``/``vocab.bpe`` files of the data
layer, so it never depends on tiktoken's own download.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

import tiktoken

ENDOFTEXT = "<|endoftext|>"
UNK = "<|unk|>"
DEFAULT_SPECIAL_TOKENS = (ENDOFTEXT, UNK)

# Split on punctuation, the double dash and whitespace, keeping the separators (the capture group) so
# punctuation becomes tokens of its own; whitespace is dropped afterwards.
SPLIT_PATTERN = r'([,.:;?_!"()\']|--|\s)'
_SPLIT_RE = re.compile(SPLIT_PATTERN)
# Decoding joins tokens with spaces; this removes the space that would precede punctuation.
_DETACH_RE = re.compile(r'\s+([,.:;?_!"()\'])')

GPT2_EOT_ID = 50256
GPT2_N_VOCAB = 50257


class UnknownTokenError(KeyError):
    """A word (or id) that the teaching tokenizer's vocabulary does not contain."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def split_text(text: str, special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS) -> list[str]:
    """Split ``text`` into word and punctuation tokens; special tokens such as ``<|endoftext|>`` stay whole."""
    specials = sorted(set(special_tokens), key=len, reverse=True)
    pieces = re.split("(" + "|".join(map(re.escape, specials)) + ")", text) if specials else [text]
    tokens: list[str] = []
    for i, piece in enumerate(pieces):
        if i % 2:  # odd positions are the special tokens captured by the split
            tokens.append(piece)
        else:
            tokens.extend(t.strip() for t in _SPLIT_RE.split(piece) if t.strip())
    return tokens


def build_vocab(text: str | Iterable[str], special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS) -> dict[str, int]:
    """Vocabulary ``{token: id}``: the sorted distinct tokens of ``text``, then ``special_tokens`` at the end.

    ``text`` is a string (split with :func:`split_text`) or an iterable of already split tokens.
    """
    tokens = split_text(text, special_tokens) if isinstance(text, str) else list(text)
    words = sorted(set(tokens) - set(special_tokens))
    vocab = {tok: i for i, tok in enumerate(words)}
    for tok in special_tokens:
        vocab.setdefault(tok, len(vocab))
    return vocab


class SimpleTokenizer:
    """Word-level tokenizer over a fixed vocabulary (Chapter 1's teaching tokenizer).

    Words outside the vocabulary become ``<|unk|>`` when the vocabulary has it; otherwise ``encode`` raises
    :class:`UnknownTokenError`. ``decode`` re-attaches punctuation to the preceding word.
    """

    def __init__(self, vocab: dict[str, int]):
        ids = sorted(vocab.values())
        if ids != list(range(len(ids))):
            raise ValueError("vocabulary ids must be 0..N-1 without gaps or repeats; build it with build_vocab()")
        self.str_to_int = dict(vocab)
        self.int_to_str = {i: s for s, i in vocab.items()}
        # the vocabulary's own angle-bracket tokens stay whole when splitting
        self.special_tokens = tuple(t for t in vocab if t.startswith("<|") and t.endswith("|>"))

    @classmethod
    def from_text(cls, text: str, special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS) -> SimpleTokenizer:
        """Build the vocabulary from ``text`` (see :func:`build_vocab`) and return a tokenizer over it."""
        return cls(build_vocab(text, special_tokens))

    def __len__(self) -> int:
        return len(self.str_to_int)

    @property
    def vocab_size(self) -> int:
        return len(self.str_to_int)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        unk = self.str_to_int.get(UNK)
        ids = []
        for tok in split_text(text, self.special_tokens):
            idx = self.str_to_int.get(tok, unk)
            if idx is None:
                raise UnknownTokenError(
                    f"{tok!r} is not in the vocabulary and the vocabulary has no {UNK} token; build it with "
                    f"build_vocab(text, special_tokens=[..., {UNK!r}]) or from a text that contains {tok!r}"
                )
            ids.append(idx)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids: tokens joined by spaces, with no space before punctuation."""
        try:
            text = " ".join(self.int_to_str[int(i)] for i in ids)
        except KeyError as e:
            raise UnknownTokenError(
                f"token id {e.args[0]} is outside the vocabulary (ids 0..{len(self) - 1}); "
                f"decode ids produced by this tokenizer's encode()"
            ) from None
        return _DETACH_RE.sub(r"\1", text)


def encode_text(tokenizer, text: str, *, endoftext_is_special: bool = False) -> list[int]:
    """Token ids of ``text`` with any tokenizer the library uses, with one rule for ``<|endoftext|>``.

    tiktoken refuses a text containing ``<|endoftext|>`` unless told what it is. By default it is ordinary
    text: a message or answer that happens to contain the string gets its characters' tokens, never the
    end-of-text id that pads batches and stops generation. ``endoftext_is_special=True`` makes it the special
    token, for corpora joined with it on purpose (Chapter 1's two documents, a pretraining text). Tokenizers
    without tiktoken's options (the teaching :class:`SimpleTokenizer`) are called as ``encode(text)``.
    """
    if not isinstance(tokenizer, tiktoken.Encoding):
        return tokenizer.encode(text)
    if endoftext_is_special:
        return tokenizer.encode(text, allowed_special={ENDOFTEXT})
    return tokenizer.encode(text, disallowed_special=())


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> tiktoken.Encoding:
    """GPT-2's byte-pair encoding, identical to ``tiktoken.get_encoding("gpt2")`` (50,257 tokens).

    Built from the data layer's verified ``gpt2-encoder``/``gpt2-vocab`` artifacts, so it works offline
    (tiktoken would otherwise download the same two files itself). Cached: repeated calls are free.
    """
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str  # the gpt2 split pattern, as tiktoken defines it

    from .artifacts import fetch, get_artifact

    encoder, vocab = get_artifact("gpt2-encoder"), get_artifact("gpt2-vocab")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(fetch(vocab.name)),
        encoder_json_file=str(fetch(encoder.name)),
        vocab_bpe_hash=vocab.sha256,
        encoder_json_hash=encoder.sha256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_N_VOCAB,
    )
