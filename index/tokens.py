"""Tokenizing for the indexer: the server's `tokenizers` call, or an exact tiktoken twin of it.

On long documents tokenising is nearly all of the work, and `tokenizers`' byte-level
pre-tokenizer runs at ~0.45M tokens/s per core here. A byte-level BPE tokenizer (GPT-2, SmolLM2,
Llama 3, Qwen2 ...) can be written as a tiktoken `Encoding` (its vocabulary as byte ranks, its
split regex), which runs ~3.5x faster. The two give the same ids when the merges are listed in
the order of their tokens' ids (tiktoken merges the pair whose result has the lowest id,
`tokenizers` the merge listed first) and nothing else differs: no normalizer, no added tokens
that strip, a post-processor that adds no tokens. `build_twin` checks all that and refuses
otherwise (`NotEquivalent`); `Tokenize` then also requires every vocabulary entry to tokenise
the same both ways, and cross-checks each actor's first documents against `tokenizers` before
it trusts the twin. Whenever one check fails it uses `tokenizers`, as `--tokenizer hf` asks.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import tiktoken

if TYPE_CHECKING:
    from zeroth.model import StaticEmbedder

log = logging.getLogger("index")

# tokenizers' ByteLevel pre-tokenizer with use_regex=True (GPT-2's pattern).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_NONE: frozenset[str] = frozenset()
# Documents an actor tokenises both ways before it trusts the twin.
CROSS_CHECK_DOCS = 256


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
    try:
        twin = tiktoken.Encoding(
            f"twin:{Path(tokenizer_json).resolve()}",
            pat_str=pattern,
            mergeable_ranks=ranks,
            special_tokens=special,
        )
    except ValueError as exc:
        raise NotEquivalent(f"tiktoken refused it: {exc}") from None
    return Twin(twin, unknown, printable_known)


def _unknown_characters(missing_bytes: Iterable[int]) -> tuple[re.Pattern | None, bool]:
    """Characters whose UTF-8 holds a byte with no token (SmolLM2 lacks a few control
    characters and lead bytes of unassigned planes). tokenizers drops such a byte, tiktoken
    cannot: documents holding one go to tokenizers. Also whether every such character is
    unprintable, so that `str.isprintable()` (faster than the search) clears most texts."""
    ranges = []
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
    if not ranges:
        return None, True
    cls = "".join(
        re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}"
        for lo, hi in ranges
    )
    unprintable = all(not chr(c).isprintable() for lo, hi in ranges for c in range(lo, hi + 1))
    return re.compile(f"[{cls}]"), unprintable


@dataclass(frozen=True)
class Twin:
    encoding: tiktoken.Encoding
    # Documents this matches are tokenised by tokenizers instead (see _unknown_characters).
    unknown: re.Pattern | None = None
    # No printable text can match `unknown`.
    printable_known: bool = False


def vocabulary_agrees(model: StaticEmbedder, twin: Twin) -> bool:
    """Every vocabulary entry that is text tokenises to the same ids both ways."""
    enc = twin.encoding
    texts = []
    for token_id in range(enc.n_vocab):
        try:
            text = enc.decode_single_token_bytes(token_id).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue
        if twin.unknown is None or not twin.unknown.search(text):
            texts.append(text)
    everything = enc.special_tokens_set
    return model.tokenize(texts) == [enc.encode(t, allowed_special=everything) for t in texts]


class Tokenize:
    """texts -> token ids, exactly as `StaticEmbedder.tokenize` (the server's call) gives them.

    mode "hf" is that call itself; "auto" uses the tiktoken twin where it exists and agrees.
    """

    def __init__(self, model: StaticEmbedder, mode: str = "auto"):
        if mode not in ("auto", "hf"):
            raise ValueError(f"unknown tokenizer mode {mode!r} (auto or hf)")
        self.model = model
        self.twin: Twin | None = None
        self.checked = True
        self.why = "asked for (--tokenizer hf)"
        if mode == "auto":
            try:
                twin = build_twin(
                    model.path / model.manifest.tokenizer.file, model.add_special_tokens
                )
            except (NotEquivalent, OSError, KeyError) as exc:
                self.why = f"no tiktoken twin: {exc}"
            else:
                if vocabulary_agrees(model, twin):
                    self.twin, self.checked, self.why = twin, False, "exact twin"
                else:
                    self.why = "no tiktoken twin: a vocabulary entry tokenises differently"

    @property
    def name(self) -> str:
        return "tiktoken twin" if self.twin is not None else "tokenizers (the server's)"

    def __call__(self, texts: Sequence[str]) -> list[Sequence[int]]:
        """One id sequence per text: a uint32 array from the twin, a list from tokenizers."""
        if self.twin is None:
            return self.model.tokenize(texts)
        ids = self._twin_ids(self.twin, texts)
        if not self.checked:
            self.checked = True
            sample = list(texts[:CROSS_CHECK_DOCS])
            if self.model.tokenize(sample) != [list(map(int, row)) for row in ids[: len(sample)]]:
                log.warning("the tiktoken twin disagrees on a document; using tokenizers")
                self.twin, self.why = None, "the twin disagreed on a document"
                return self.model.tokenize(texts)
        return ids

    def _twin_ids(self, twin: Twin, texts: Sequence[str]) -> list[Sequence[int]]:
        enc = twin.encoding
        # No Python int per token (encode_to_numpy): 30 % less CPU than lists of ids.
        encode = enc.encode_to_numpy
        # tokenizers finds added tokens anywhere in a text; tiktoken does where allowed, at a
        # cost (7 %), paid only by texts holding the first character of one (SciFact: "<").
        everything = enc.special_tokens_set
        starts = {token[0] for token in everything if token}
        unknown = twin.unknown.search if twin.unknown is not None else None
        out = []
        for text in texts:
            if unknown and not (twin.printable_known and text.isprintable()) and unknown(text):
                # tokenizers skips a byte it has no token for; the twin would stop there.
                out.append(self.model.tokenize([text])[0])
            elif any(c in text for c in starts):
                out.append(encode(text, allowed_special=everything))
            else:
                out.append(encode(text, allowed_special=_NONE, disallowed_special=()))
        return out
