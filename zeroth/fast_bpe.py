"""A faster, exact route through byte-level BPE tokenizers (GPT-2 style: SmolLM2, Llama 3...).

`tokenizers` spends most of its time per token outside the BPE merges: building its normalised
strings, alignments, token strings and the Encoding. For ASCII text the same ids come out of:

1. the pre-tokenizer's regex, which on ASCII text is Python's `re` with ASCII classes
   (\\p{L} = [A-Za-z], \\p{N} = [0-9], \\s = [ \\t\\n\\v\\f\\r]);
2. the tokenizer's own BPE model (`tokenizer.model.tokenize`) on each piece, mapped to the
   byte-level alphabet, memoised per piece as `tokenizers` itself does (its BPE word cache).

So the merges are still done by `tokenizers`; only the bookkeeping around them is skipped. Texts
that are not ASCII, or that hold an added/special token's text, go through `tokenizers` as before.
`build` accepts a tokenizer only if its pipeline is exactly normaliser-free ByteLevel + BPE with
nothing added by post-processing, and only if a self-test on every ASCII character in several
contexts agrees with `tokenizers`; otherwise the caller keeps the plain path.
ZEROTH_FAST_TOKENIZER=0 turns it off.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from itertools import chain

from tokenizers import Tokenizer

from zeroth.switches import switched_off

log = logging.getLogger(__name__)

# GPT-2's pre-tokenizer pattern (tokenizers' ByteLevel, use_regex=True), restricted to ASCII.
_PIECES = re.compile(
    r"'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+", re.ASCII
)
# Pieces memoised per process, up to CACHE_SIZE of at most MAX_CACHED_PIECE characters (longer
# ones are rare and tokenised each time), cleared when full: a few MB typically, ~20 MB at most.
CACHE_SIZE = 32768
MAX_CACHED_PIECE = 48


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's bytes_to_unicode: the character that stands for each byte in the vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return chars


# str.translate table: ASCII text -> its byte-level spelling.
_ASCII_TO_BYTE_LEVEL = {b: c for b, c in _byte_alphabet().items() if b < 128}


def _self_test_texts() -> list[str]:
    """Every ASCII character alone and next to letters, digits, spaces, apostrophes, itself."""
    out = []
    for i in range(128):
        c = chr(i)
        out += [c, f"a{c}b", f" {c}", f"{c} a", c * 3, f"  {c}{c}x", f"1{c}2", f"'{c}s", f"{c}\n"]
    out += [
        "",
        "Hello, world! It's 2024: we'll see, they've gone, I'm here, you're there, he'd go.",
        "a  b   c\t\td\n\ne \r\n f\x0b\x0cg",
        "trailing spaces   ",
        "   leading spaces",
        "x'S X'LL 'd 'dd '",
        "12345678901234567890 3.14159 1,000,000 -7e10",
        "snake_case camelCase kebab-case PascalCase SCREAMING_CASE",
        "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
        '<html><body class="x">&amp;&lt;</body></html>',
        '~!@#$%^&*()_+`-=[]\\{}|;:",./<>?',
    ]
    return out


class FastByteLevelBPE:
    def __init__(self, tokenizer: Tokenizer, add_special_tokens: bool):
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens
        model = tokenizer.model
        # One int object per id, shared by every cached piece.
        ids = list(range(tokenizer.get_vocab_size(with_added_tokens=True)))

        class _Cache(dict):
            def __missing__(self, piece: str) -> tuple[int, ...]:
                result = tuple(
                    ids[t.id] for t in model.tokenize(piece.translate(_ASCII_TO_BYTE_LEVEL))
                )
                if len(piece) <= MAX_CACHED_PIECE:
                    if len(self) >= CACHE_SIZE:
                        self.clear()
                    self[piece] = result
                return result

        cache = _Cache()
        self._cache = cache
        self._get = cache.__getitem__
        added = sorted(
            (t.content for t in tokenizer.get_added_tokens_decoder().values() if t.content),
            key=len,
            reverse=True,
        )
        self._added = re.compile("|".join(map(re.escape, added))) if added else None

    @classmethod
    def build(cls, tokenizer: Tokenizer, add_special_tokens: bool) -> FastByteLevelBPE | None:
        """The fast route for `tokenizer`, or None when it is not a pipeline this covers."""
        if switched_off("ZEROTH_FAST_TOKENIZER"):
            return None
        reason = _unsupported(tokenizer)
        if reason is None:
            fast = cls(tokenizer, add_special_tokens)
            texts = _self_test_texts()
            want = [
                e.ids
                for e in tokenizer.encode_batch_fast(texts, add_special_tokens=add_special_tokens)
            ]
            got = fast.encode(texts)
            bad = [t for t, a, b in zip(texts, want, got, strict=True) if a != b]
            if not bad:
                fast._cache.clear()
                return fast
            reason = f"self-test differs on {len(bad)} texts, e.g. {bad[0]!r}"
        log.debug("fast tokenizer not used: %s", reason)
        return None

    def encode_ascii(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of ASCII texts that hold no added token (the caller checks)."""
        get = self._get
        findall = _PIECES.findall
        return [list(chain.from_iterable(map(get, findall(text)))) for text in texts]

    def _fast_ok(self, text: str) -> bool:
        return text.isascii() and (self._added is None or self._added.search(text) is None)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Exactly `[e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens)]`."""
        added = self._added
        if all(map(str.isascii, texts)):
            # One search over all texts; a hit only sends the texts that hold it the slow way.
            if added is None or added.search("\n".join(texts)) is None:
                return self.encode_ascii(texts)
        fast = [self._fast_ok(t) for t in texts]
        slow = [t for t, ok in zip(texts, fast, strict=True) if not ok]
        encodings = iter(
            self.tokenizer.encode_batch_fast(slow, add_special_tokens=self.add_special_tokens)
        )
        get = self._get
        findall = _PIECES.findall
        return [
            list(chain.from_iterable(map(get, findall(t)))) if ok else next(encodings).ids
            for t, ok in zip(texts, fast, strict=True)
        ]


def _unsupported(tokenizer: Tokenizer) -> str | None:
    """Why this tokenizer's pipeline is not normaliser-free ByteLevel + plain BPE, or None."""
    if tokenizer.normalizer is not None:
        return "it has a normalizer"
    pre = tokenizer.pre_tokenizer
    if type(pre).__name__ != "ByteLevel":
        return f"pre-tokenizer {type(pre).__name__}"
    if pre.add_prefix_space or not pre.use_regex:
        return "ByteLevel without GPT-2's regex, or with a prefix space"
    model = tokenizer.model
    if type(model).__name__ != "BPE":
        return f"model {type(model).__name__}"
    if model.dropout:
        return "BPE dropout is random"
    return None
