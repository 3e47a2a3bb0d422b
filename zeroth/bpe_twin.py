r"""An exact tiktoken twin of a byte-level BPE tokenizer: the same ids, several times faster.

A byte-level BPE tokenizer.json (GPT-2, SmolLM2, Llama 3, Qwen2 ...) can be written as a
tiktoken `Encoding`: its vocabulary as byte ranks, its split regex. The two give the same ids
when the merges are listed in the order of their tokens' ids (tiktoken merges the pair whose
result has the lowest id, `tokenizers` the merge listed first) and nothing else differs: no
normalizer, no added tokens that strip, a post-processor that adds no tokens. `build_twin`
checks all that and refuses otherwise (`NotEquivalent`); `Twin.agrees_on_vocabulary` then
requires every vocabulary entry to tokenise the same both ways before StaticEmbedder uses it.

Most of tiktoken's time is its regex, and the split patterns end in `\s+(?!\S)|\s+`, whose
look-ahead sends the whole pattern to a backtracking engine. In a text with no two whitespace
characters in a row that tail matches exactly what `\s+` alone matches (one whitespace
character, wherever the alternatives before it fail), so such texts, nearly all, go through a
second Encoding with the tail `\s+`, which tiktoken runs on a DFA: ~2x faster again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import tiktoken

Reference = Callable[[list[str]], list[list[int]]]

# tokenizers' ByteLevel pre-tokenizer with use_regex=True (GPT-2's pattern).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_NONE: frozenset[str] = frozenset()
# The split patterns' tail, and what it is for text without two whitespace characters in a row.
LOOKAHEAD_TAIL = r"|\s+(?!\S)|\s+"
PLAIN_TAIL = r"|\s+"
# Python's \s holds every character of Unicode's White_Space, which is tiktoken's \s, and a
# few more (\x1c-\x1f): a text it clears has no two of tiktoken's whitespace in a row.
_TWO_SPACES = re.compile(r"\s\s")


class NotEquivalent(ValueError):
    """The tokenizer.json holds something the tiktoken twin would not reproduce."""


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: a vocabulary character -> its byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += range(ord("®"), ord("ÿ") + 1)
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _pattern(pre: dict | None) -> str:
    """The one regex the pre-tokenizer splits with, for the shapes tiktoken reproduces."""
    if pre is None:
        raise NotEquivalent("no pre-tokenizer")
    if pre.get("type") == "ByteLevel":
        if pre.get("add_prefix_space") or not pre.get("use_regex", True):
            raise NotEquivalent("ByteLevel with add_prefix_space or without its regex")
        return GPT2_PATTERN
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        # Llama 3 / Qwen2: Split(regex, Isolated) then ByteLevel(use_regex=False).
        if len(steps) == 2 and steps[0].get("type") == "Split":
            split, byte_level = steps
            regex = (split.get("pattern") or {}).get("Regex")
            if (
                regex
                and split.get("behavior") == "Isolated"
                and not split.get("invert")
                and byte_level.get("type") == "ByteLevel"
                and not byte_level.get("add_prefix_space")
                and not byte_level.get("use_regex", True)
            ):
                return regex
        if len(steps) == 1:
            return _pattern(steps[0])
    raise NotEquivalent(f"pre-tokenizer {pre.get('type')!r} of this shape")


def _post_processor_adds_nothing(post: dict | None) -> bool:
    if post is None or post.get("type") == "ByteLevel":
        return True
    if post.get("type") == "TemplateProcessing":
        return all("Sequence" in piece for piece in post.get("single", []))
    if post.get("type") == "Sequence":
        return all(_post_processor_adds_nothing(p) for p in post.get("processors", []))
    return False


def fingerprint(tokenizer_json: Path) -> dict[str, str]:
    """What a passed vocabulary check holds for: this very file, read by these libraries.
    The extractor records it in the manifest (TokenizerSpec.tiktoken_twin)."""
    return {
        "tokenizer_sha256": hashlib.sha256(Path(tokenizer_json).read_bytes()).hexdigest(),
        "tiktoken": metadata.version("tiktoken"),
        "tokenizers": metadata.version("tokenizers"),
    }


def exact_twin(
    tokenizer_json: Path,
    add_special_tokens: bool,
    reference: Reference,
    checked: Mapping[str, str] | None = None,
) -> tuple[Twin | None, str]:
    """The twin of this tokenizer if it exists and agrees with `reference` on the whole
    vocabulary, else None; and why. The vocabulary check (~1 s) is skipped when `checked`,
    recorded when it passed at extraction, is this file's fingerprint."""
    try:
        twin = build_twin(tokenizer_json, add_special_tokens)
        if checked is not None and dict(checked) == fingerprint(tokenizer_json):
            return twin, "exact tiktoken twin (vocabulary checked at extraction)"
    except (NotEquivalent, OSError, KeyError) as exc:
        return None, f"no tiktoken twin: {exc}"
    if not twin.agrees_on_vocabulary(reference):
        return None, "no tiktoken twin: a vocabulary entry tokenises differently"
    return twin, "exact tiktoken twin"


def build_twin(tokenizer_json: Path, add_special_tokens: bool) -> Twin:
    """The tiktoken Encoding equal to this tokenizer.json, or NotEquivalent saying why not."""
    spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise NotEquivalent(f"model type {model.get('type')!r}, not BPE")
    if spec.get("normalizer") is not None:
        raise NotEquivalent("a normalizer")
    if model.get("dropout") or model.get("byte_fallback") or model.get("ignore_merges"):
        raise NotEquivalent("BPE dropout, byte_fallback or ignore_merges")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise NotEquivalent("subword prefix/suffix")
    if add_special_tokens and not _post_processor_adds_nothing(spec.get("post_processor")):
        raise NotEquivalent("a post-processor that adds tokens")
    pattern = _pattern(spec.get("pre_tokenizer"))

    special: dict[str, int] = {}
    for added in spec.get("added_tokens", []):
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            raise NotEquivalent(f"added token {added['content']!r} strips or matches words")
        special[added["content"]] = added["id"]

    decoder = _byte_decoder()
    vocab: dict[str, int] = model["vocab"]
    ranks: dict[bytes, int] = {}
    for text, token_id in vocab.items():
        if text in special:
            continue
        try:
            ranks[bytes(decoder[ch] for ch in text)] = token_id
        except KeyError:
            raise NotEquivalent(f"vocabulary entry {text!r} is not byte-level") from None
    if len(ranks) + len(special) != len(vocab.keys() | special.keys()):
        raise NotEquivalent("two vocabulary entries spell the same bytes")
    unknown, printable_known = _unknown_characters(b for b in range(256) if bytes([b]) not in ranks)
    # tiktoken merges the adjacent pair whose result has the lowest id; tokenizers applies the
    # merge listed first. They agree when ids rise in the order the merges are listed.
    previous = -1
    for merge in model.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        token_id = vocab.get(left + right)
        if token_id is None or token_id <= previous:
            raise NotEquivalent("merges not listed in the order of their tokens' ids")
        previous = token_id
    name = f"twin:{Path(tokenizer_json).resolve()}"
    try:
        twin = tiktoken.Encoding(
            name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special
        )
    except ValueError as exc:
        raise NotEquivalent(f"tiktoken refused it: {exc}") from None
    quick = twin
    if pattern.endswith(LOOKAHEAD_TAIL):
        quick = tiktoken.Encoding(
            f"{name}:no-lookahead",
            pat_str=pattern[: -len(LOOKAHEAD_TAIL)] + PLAIN_TAIL,
            mergeable_ranks=ranks,
            special_tokens=special,
        )
    return Twin(twin, quick, unknown, printable_known)


def _unknown_characters(missing_bytes: Iterable[int]) -> tuple[re.Pattern, bool]:
    """Characters whose UTF-8 holds a byte with no token (SmolLM2 lacks a few control
    characters and lead bytes of unassigned planes). tokenizers drops such a byte, tiktoken
    cannot: documents holding one go to tokenizers. Also whether every such character is
    unprintable, so that `str.isprintable()` (faster than the search) clears most texts."""
    # Lone surrogates cannot be UTF-8: tokenizers refuses them, tiktoken would replace them.
    ranges = [(0xD800, 0xDFFF)]
    for b in missing_bytes:
        if b < 0x80:
            ranges.append((b, b))
        elif b < 0xC0:
            raise NotEquivalent(f"no token for the UTF-8 continuation byte {b:#x}")
        elif 0xC2 <= b <= 0xDF:
            ranges.append(((b & 0x1F) << 6, ((b & 0x1F) << 6) + 0x3F))
        elif 0xE0 <= b <= 0xEF:
            ranges.append(((b & 0x0F) << 12, ((b & 0x0F) << 12) + 0xFFF))
        elif 0xF0 <= b <= 0xF4:
            ranges.append(((b & 0x07) << 18, ((b & 0x07) << 18) + 0x3FFFF))
        # C0, C1 and F5..FF never occur in UTF-8.
    cls = "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for lo, hi in ranges
    )
    # map, not a generator: ~0.5 M code points (whole planes) checked at start-up.
    unprintable = not any(
        any(map(str.isprintable, map(chr, range(lo, hi + 1)))) for lo, hi in ranges
    )
    return re.compile(f"[{cls}]"), unprintable


class Twin:
    """texts -> ids through tiktoken, exactly as the tokenizer.json it was built from."""

    def __init__(
        self,
        encoding: tiktoken.Encoding,
        quick: tiktoken.Encoding,
        unknown: re.Pattern,
        printable_known: bool,
    ):
        self.encoding = encoding
        # The same without the look-ahead, for texts with no two whitespace in a row.
        self.quick = quick
        # Documents this matches are tokenised by `tokenizers` instead (see _unknown_characters).
        self.unknown = unknown
        # No printable text can match `unknown`.
        self.printable_known = printable_known
        self.special = encoding.special_tokens_set
        # tokenizers finds added tokens anywhere in a text; tiktoken does where allowed, at a
        # cost (7 %), paid only by texts holding the first character of one (often just "<").
        firsts = sorted({token[0] for token in self.special if token})
        self._starts = re.compile(f"[{''.join(map(re.escape, firsts))}]").search if firsts else None

    def encode(self, texts: Sequence[str], fallback: Reference) -> list[list[int]]:
        """Ids as lists; `fallback` (the tokenizer itself) takes texts the twin cannot."""
        return self._encode(texts, fallback, arrays=False)

    def encode_arrays(self, texts: Sequence[str], fallback: Reference) -> list[Sequence[int]]:
        """Ids as uint32 arrays: no Python int per token, ~30 % cheaper on long documents.
        Texts that `fallback` takes come back as lists."""
        return self._encode(texts, fallback, arrays=True)

    def _encode(self, texts: Sequence[str], fallback: Reference, arrays: bool) -> list:
        full, quick = self.encoding, self.quick
        unknown = self.unknown.search
        printable_known = self.printable_known
        starts = self._starts
        two_spaces = _TWO_SPACES.search
        special = self.special
        out = []
        for text in texts:
            if not (printable_known and text.isprintable()) and unknown(text):
                # tokenizers skips a byte it has no token for; the twin would stop there.
                out.append(fallback([text])[0])
                continue
            enc = full if two_spaces(text) else quick
            allowed = special if starts and starts(text) else _NONE
            if arrays:
                out.append(
                    enc.encode_to_numpy(text, allowed_special=allowed, disallowed_special=())
                )
            elif allowed:
                out.append(enc.encode(text, allowed_special=allowed, disallowed_special=()))
            else:
                out.append(enc.encode_ordinary(text))
        return out

    def agrees_on_vocabulary(self, reference: Reference) -> bool:
        """Every vocabulary entry that is text tokenises to the same ids as `reference` gives."""
        enc = self.encoding
        texts = []
        for token_id in range(enc.n_vocab):
            try:
                text = enc.decode_single_token_bytes(token_id).decode("utf-8")
            except (KeyError, UnicodeDecodeError):
                continue
            if not self.unknown.search(text):
                texts.append(text)
        return reference(texts) == self.encode(texts, reference)
