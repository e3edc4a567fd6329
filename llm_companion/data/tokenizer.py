"""Tokenizers: the teaching word-level tokenizer of Chapter 1 and GPT-2's byte-pair encoding.

``SimpleTokenizer`` is the tokenizer Chapter 1 derives: split text with a regular expression, give every
distinct token an id, and map words outside the vocabulary to ``<|unk|>``. ``gpt2_tokenizer()`` is the real
thing: tiktoken's ``gpt2`` encoding, built from the verified ``encoder.json``/``vocab.bpe`` files of the data
layer, so it never depends on tiktoken's own download. :func:`decode_stream` turns generated token ids
back into text that is safe to print while it streams (one character may span two byte-level tokens).
"""
from __future__ import annotations

import codecs
import functools
import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Literal

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str  # the gpt2 split pattern, as tiktoken defines it

from llm_companion.data.artifacts import fetch, get_artifact
from llm_companion.data.gguf_file import GGUFError, read_gguf

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



def token_bytes(tokenizer, token: int) -> bytes:
    """The bytes of one token: byte-level BPE tokens are byte strings, not always whole characters."""
    try:
        return tokenizer.decode_single_token_bytes(token)
    except AttributeError:  # a tokenizer without byte-level access (the teaching SimpleTokenizer)
        return tokenizer.decode([token]).encode("utf-8")


def decode_stream(tokens: Iterable[int], tokenizer, *, stops: tuple[str, ...] = ()) -> Iterator[str]:
    """Turn a stream of token ids into text pieces that are safe to print as they come.

    GPT-2 tokens are byte sequences and one character may span two tokens, so bytes go through an
    incremental UTF-8 decoder: half a character is held back until its other half arrives. Text that may be
    the start of a stop marker (a new section such as ``### Instruction:``) is held back too; the text ends at a
    complete marker (the generator is then closed, which ends generation). Leading and trailing whitespace
    is dropped.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending, started = "", False
    tokens = iter(tokens)
    try:
        for tok in tokens:
            pending += decoder.decode(token_bytes(tokenizer, tok))
            if not started:
                pending = pending.lstrip()
                started = bool(pending)
            cut = min((p for p in (pending.find(m) for m in stops) if p != -1), default=-1)
            if cut != -1:
                if pending[:cut].rstrip():
                    yield pending[:cut].rstrip()
                return
            # hold back a possible marker start and the whitespace before it: an answer that ends there
            # must not end with a stray newline
            head = pending[:len(pending) - _marker_prefix_len(pending, stops)].rstrip()
            if head:
                yield head
                pending = pending[len(head):]
        pending += decoder.decode(b"", final=True)
        if pending.strip():
            yield pending.strip() if not started else pending.rstrip()
    finally:
        close = getattr(tokens, "close", None)
        if close is not None:
            close()


def _marker_prefix_len(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the start of one of ``markers``."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if text.endswith(m[:n]):
                best = n
                break
    return best

@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> tiktoken.Encoding:
    """GPT-2's byte-pair encoding, identical to ``tiktoken.get_encoding("gpt2")`` (50,257 tokens).

    Built from the data layer's verified ``gpt2-encoder``/``gpt2-vocab`` artifacts, so it works offline
    (tiktoken would otherwise download the same two files itself). Cached: repeated calls are free.
    """
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


# --------------------------------------------------------------------------------------------- GGUF tokenizers
# SmolLM2's pre-tokenizer ("smollm" in llama.cpp, Digits(individual_digits) + ByteLevel in its tokenizer.json):
# every digit on its own, then GPT-2's pattern on the text between digits. One pattern does both: \p{N}
# alone, and a run of spaces also ends where a digit starts (the lookahead treats a digit like the end of text).
SMOLLM_PAT_STR = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
GGUF_CONTROL = 3  # tokenizer.ggml.token_type of control tokens (<|im_start|>, ...)


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte (how byte-level vocabularies spell tokens), inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _chars_without_tokens(missing: set[int]) -> str:
    """A regex character class of the characters whose UTF-8 bytes include a byte the vocabulary lacks."""
    parts = []
    for b in sorted(missing):
        if b < 0x80:
            parts.append(f"\\x{b:02x}")
        elif 0xC2 <= b <= 0xDF:
            parts.append(f"\\u{(b & 0x1F) << 6:04x}-\\u{((b & 0x1F) << 6) + 0x3F:04x}")
        elif 0xE0 <= b <= 0xEF:
            lo = max((b & 0x0F) << 12, 0x800)
            parts.append(f"\\u{lo:04x}-\\u{((b & 0x0F) << 12) + 0xFFF:04x}")
        elif 0xF0 <= b <= 0xF4:
            lo = max((b & 0x07) << 18, 0x10000)
            parts.append(f"\\U{lo:08x}-\\U{min(((b & 0x07) << 18) + 0x3FFFF, 0x10FFFF):08x}")
        elif 0x80 <= b <= 0xBF:
            raise ValueError(f"the vocabulary lacks the UTF-8 continuation byte 0x{b:02x}; "
                             f"this tokenizer cannot represent such a vocabulary")
        # 0xC0, 0xC1, 0xF5-0xFF never occur in UTF-8 text
    return f"[{''.join(parts)}]" if parts else ""


class GGUFTokenizer:
    """A byte-level BPE tokenizer read from a GGUF file, running on tiktoken (``.encoding``).

    ``encode`` treats control-token strings such as ``<|im_start|>`` as plain text unless ``allowed_special``
    names them (``"all"`` for a chat prompt); ``eot_token`` is the end-of-turn id generation stops at.
    Characters whose bytes have no token in the vocabulary (SmolLM2 lacks 6 ASCII control characters) are
    dropped, as Hugging Face's tokenizer drops them.
    """

    def __init__(self, encoding: tiktoken.Encoding, *, bos_token_id: int | None, eos_token_id: int | None,
                 chat_template: str | None = None, uncoverable: str = ""):
        self.encoding = encoding
        self.name = encoding.name
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.chat_template = chat_template
        self._uncoverable = re.compile(uncoverable) if uncoverable else None

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_token(self) -> int | None:
        return self.eos_token_id

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t: self.encoding.encode_single_token(t) for t in self.encoding.special_tokens_set}

    def encode(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
               disallowed_special: Literal["all"] | Collection[str] = ()) -> list[int]:
        """Token ids of ``text`` (control tokens only where ``allowed_special`` lets them be special)."""
        pieces = self._uncoverable.split(text) if self._uncoverable is not None else [text]
        ids: list[int] = []
        for piece in pieces:
            ids += self.encoding.encode(piece, allowed_special=allowed_special,
                                        disallowed_special=disallowed_special)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode([int(i) for i in ids], errors="replace")

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self.encoding.decode_single_token_bytes(int(token))

    def __len__(self) -> int:
        return self.n_vocab

    def __repr__(self) -> str:
        return f"GGUFTokenizer({self.name!r}, {self.n_vocab:,} tokens)"


def gguf_tokenizer(source) -> GGUFTokenizer:
    """The tokenizer of a GGUF file (a path or :func:`~llm_companion.data.gguf_file.read_gguf` contents), from the file
    alone: byte-level BPE whose merge rank is the token id, the ``tokenizer.ggml.pre`` split pattern, control
    tokens as specials.

    Where Hugging Face's GGUF tokenizer and the model's own tokenizer disagree we follow the model's
    (llama.cpp and SmolLM2's ``tokenizer.json`` agree with each other): transformers splits SmolLM2 text with
    GPT-2's plain pattern, so two or more spaces before a digit become one ``Ġ`` token per space
    (``"a  1"`` → ``a Ġ Ġ 1``), while the trained pre-tokenizer keeps the run whole (``a ĠĠ 1``); likewise a
    space before a non-ASCII numeral (``" Ⅻ"``) is one token there and two here, as in training.
    """
    contents = read_gguf(source) if isinstance(source, (str, os.PathLike)) else source
    meta = contents.metadata
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "gpt2")
    if model != "gpt2":
        raise GGUFError(f"{contents.path}: tokenizer model {model!r}; only byte-level BPE ('gpt2') is supported")

    patterns = {"smollm": SMOLLM_PAT_STR, "gpt2": r50k_pat_str, "default": r50k_pat_str}
    if pre not in patterns:
        raise GGUFError(f"{contents.path}: pre-tokenizer {pre!r} is not supported (known: {', '.join(patterns)})")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    byte_of = _gpt2_byte_decoder()
    ranks: dict[bytes, int] = {}
    specials: dict[str, int] = {}
    for i, (tok, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind == GGUF_CONTROL:
            specials[tok] = i
        else:
            try:
                ranks[bytes(byte_of[ch] for ch in tok)] = i  # ids are in merge order: the id is the rank
            except KeyError:
                raise GGUFError(f"{contents.path}: token {i} ({tok!r}) is not spelled in GPT-2's byte "
                                f"alphabet; not a byte-level vocabulary") from None
    missing = {b for b in range(256) if bytes([b]) not in ranks}
    encoding = tiktoken.Encoding(name=str(meta.get("general.name", contents.path.stem)), pat_str=patterns[pre],
                                 mergeable_ranks=ranks, special_tokens=specials, explicit_n_vocab=len(tokens))
    return GGUFTokenizer(encoding, bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
                         eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
                         chat_template=meta.get("tokenizer.chat_template"),
                         uncoverable=_chars_without_tokens(missing))
