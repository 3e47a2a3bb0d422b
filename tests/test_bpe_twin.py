"""The tiktoken twin (zeroth/bpe_twin.py): the tokenizer's exact ids, through either Encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from tests.real_server import SMOLLM2_DIR
from tests.test_index import EDGE_TEXTS, as_lists, needs_smollm2, random_texts
from zeroth.bpe_twin import (
    _TWO_SPACES,
    GPT2_PATTERN,
    NotEquivalent,
    Twin,
    build_twin,
    exact_twin,
    fingerprint,
)
from zeroth.model import StaticEmbedder
from zeroth.tokenizer import TextTokenizer

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Unicode's White_Space property (PropList.txt), which is what \s means to tiktoken's regex.
WHITE_SPACE = [
    *map(chr, range(0x09, 0x0E)),
    " ",
    "\x85",
    "\xa0",
    "\u1680",
    *map(chr, range(0x2000, 0x200B)),
    "\u2028",
    "\u2029",
    "\u202f",
    "\u205f",
    "\u3000",
]


def train_byte_level_bpe(path: Path, split_regex: str | None = None) -> Path:
    """A small byte-level BPE, GPT-2 style (or Llama 3 style: Split + ByteLevel without regex)."""
    tok = Tokenizer(models.BPE())
    if split_regex is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(random_texts(400, seed=1), trainer)
    tok.save(str(path))
    return path


def reference_of(tokenizer_json: Path):
    hf = Tokenizer.from_file(str(tokenizer_json))
    return lambda texts: [e.ids for e in hf.encode_batch_fast(list(texts))]


@pytest.fixture(scope="module", params=[None, LLAMA3_PATTERN], ids=["gpt2", "llama3"])
def trained(request, tmp_path_factory) -> tuple[Twin, object]:
    path = train_byte_level_bpe(tmp_path_factory.mktemp("bpe") / "tokenizer.json", request.param)
    return build_twin(path, True), reference_of(path)


def test_twin_tokenizes_like_tokenizers(trained):
    twin, reference = trained
    texts = [*EDGE_TEXTS, *random_texts(300, seed=2)]
    spaced = [bool(_TWO_SPACES.search(t)) for t in texts]
    assert any(spaced) and not all(spaced)  # both Encodings are used
    assert twin.encode(texts, reference) == reference(texts)
    assert as_lists(twin.encode_arrays(texts, reference)) == reference(texts)
    assert twin.agrees_on_vocabulary(reference)
    # The quick Encoding is the same pattern without its look-ahead.
    assert "(?!" in twin.encoding._pat_str and "(?!" not in twin.quick._pat_str
    assert twin.quick._pat_str == twin.encoding._pat_str.removesuffix(r"|\s+(?!\S)|\s+") + r"|\s+"


def test_gpt2_pattern_is_gpt2s(tmp_path):
    twin = build_twin(train_byte_level_bpe(tmp_path / "tokenizer.json"), True)
    assert twin.encoding._pat_str == GPT2_PATTERN


# Texts full of whitespace of every kind next to letters, digits, punctuation and contractions.
spacey_text = st.lists(
    st.sampled_from([*WHITE_SPACE, "\x1c", "\x1f", "\u200b"])
    | st.sampled_from(["a", "Zq", "é", "中文", "1", "42", ".", "'", "'s", "'LL", "-", "🙂", "<|"]),
    max_size=16,
).map("".join)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(spacey_text, min_size=1, max_size=6))
def test_quick_encoding_only_where_it_is_exact(trained, texts):
    twin, reference = trained
    for text in texts:
        if not _TWO_SPACES.search(text):  # the twin's own rule for taking the quick Encoding
            assert twin.quick.encode_ordinary(text) == twin.encoding.encode_ordinary(text)
    assert twin.encode(texts, reference) == reference(texts)


def test_the_two_spaces_rule_sees_all_of_tiktokens_whitespace():
    for a in WHITE_SPACE:
        for b in WHITE_SPACE:
            assert _TWO_SPACES.search(f"x{a}{b}y"), (a, b)


def test_no_twin_for_other_tokenizers(tmp_path, tiny_ckpt):
    with pytest.raises(NotEquivalent, match="WordLevel"):
        build_twin(tiny_ckpt / "tokenizer.json", True)
    text = StaticEmbedder.from_pretrained(tiny_ckpt).text
    assert text.twin is None and "WordLevel" in text.twin_why
    spec = json.loads(train_byte_level_bpe(tmp_path / "tokenizer.json").read_text())
    shuffled = dict(spec, model=dict(spec["model"], merges=spec["model"]["merges"][::-1]))
    (tmp_path / "shuffled.json").write_text(json.dumps(shuffled))
    with pytest.raises(NotEquivalent, match="merges not listed"):
        build_twin(tmp_path / "shuffled.json", True)
    normalized = dict(spec, normalizer={"type": "Lowercase"})
    (tmp_path / "lower.json").write_text(json.dumps(normalized))
    with pytest.raises(NotEquivalent, match="normalizer"):
        build_twin(tmp_path / "lower.json", True)


def test_no_twin_that_disagrees_on_the_vocabulary(tmp_path):
    path = train_byte_level_bpe(tmp_path / "tokenizer.json")
    reference = reference_of(path)
    twin, why = exact_twin(path, True, reference)
    assert twin is not None, why

    def off_by_one(texts):
        return [[i + 1 for i in row] for row in reference(texts)]

    twin, why = exact_twin(path, True, off_by_one)
    assert twin is None and "vocabulary" in why


@needs_smollm2
def test_served_model_uses_its_twin_and_drops_it_on_a_difference(monkeypatch):
    text = TextTokenizer.from_file(SMOLLM2_DIR / "tokenizer.json", add_special_tokens=True)
    assert text.twin is not None, text.twin_why
    texts = [*EDGE_TEXTS, *random_texts(50, seed=4)]
    assert text.tokenize(texts) == text.tokenize_plain(texts)
    text._unchecked = 10
    monkeypatch.setattr(text.twin, "encode", lambda texts, fallback: [[0] for _ in texts])
    assert text.tokenize(texts) == text.tokenize_plain(texts)  # the cross-check caught it
    assert text.twin is None and "differed" in text.twin_why
    assert text.tokenize(texts) == text.tokenize_plain(texts)


@needs_smollm2
def test_twin_refuses_what_tokenizers_refuses():
    text = TextTokenizer.from_file(SMOLLM2_DIR / "tokenizer.json", add_special_tokens=True)
    text._unchecked = 0
    for lone_surrogate in ["a\ud800b", "\udfff"]:
        with pytest.raises(TypeError):
            text.tokenize_plain([lone_surrogate])
        with pytest.raises(TypeError):
            text.tokenize([lone_surrogate])


def test_a_check_recorded_at_extraction_holds_only_for_that_file(tmp_path, monkeypatch):
    path = train_byte_level_bpe(tmp_path / "tokenizer.json")
    reference, record = reference_of(path), fingerprint(path)
    checks = []
    real = Twin.agrees_on_vocabulary
    monkeypatch.setattr(
        Twin, "agrees_on_vocabulary", lambda self, ref: checks.append(1) or real(self, ref)
    )
    twin, why = exact_twin(path, True, reference, record)
    assert twin is not None and "at extraction" in why and not checks
    for stale in (dict(record, tokenizer_sha256="0" * 64), dict(record, tiktoken="0.0.1")):
        twin, why = exact_twin(path, True, reference, stale)
        assert twin is not None and "at extraction" not in why
    assert len(checks) == 2
    # A recorded check does not hide a tokenizer that has no twin.
    spec = json.loads(path.read_text())
    (tmp_path / "lower.json").write_text(json.dumps(dict(spec, normalizer={"type": "Lowercase"})))
    twin, why = exact_twin(
        tmp_path / "lower.json", True, reference, fingerprint(tmp_path / "lower.json")
    )
    assert twin is None and "normalizer" in why


def test_twin_not_asked_for(tmp_path):
    """use_twin=False (what ZEROTH_FAST_TOKENIZER=0 was): `tokenizers` alone, same ids."""
    path = train_byte_level_bpe(tmp_path / "tokenizer.json")
    reference = reference_of(path)
    texts = [*EDGE_TEXTS, *random_texts(50, seed=5)]
    assert TextTokenizer.from_file(path, True).twin is not None
    plain = TextTokenizer.from_file(path, True, use_twin=False)
    assert plain.twin is None and plain.route.startswith("tokenizers")
    assert plain.tokenize(texts) == reference(texts)
    assert as_lists(plain.tokenize_arrays(texts)) == reference(texts)
