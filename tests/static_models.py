"""Tiny trained-static-model folders, written the way each library writes them, for import tests.

model2vec and sentence-transformers folders come from the libraries' own save functions;
WordLlama has none for its inference models, so its folder is laid out as the wheel ships it
(weights/, tokenizers/, config/train/), which is also the cache_dir layout WordLlama.load reads.
Tables are random; the tokenizer is a small WordPiece one with a post-processor that adds
[CLS]/[SEP] (which the libraries do not add) and words it does not know (unknown tokens).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

WORDS = (
    "the a cat dog bird fish sat ran flew swam on under over mat log tree sea quick brown lazy "
    "red blue green small big old new is was and or not very hello world"
).split()
# Long tokens nobody uses in SENTENCES: they raise model2vec's median token length, so its
# character cut (max_length * median) falls after its token cut in the truncation tests.
FILLER = [f"##{'z' * 12}{i}" for i in range(60)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
UNK_ID = 1
VOCAB = SPECIALS + WORDS + ["##s", "##ed", "##ing"] + FILLER
DIM = 16
SENTENCES = [
    "the cat sat on the mat",
    "A quick brown DOG ran over the log",
    "fish swam under the old blue sea and the big red bird flew over a tree",
    "lazy",
    "hello zebra world",  # zebra: unknown
    "xylophone",  # nothing but an unknown token
    "cats walked and jumped",
]
# 56 tokens (fox is unknown): longer than the truncation limits the tests set.
LONG = " ".join(["the quick brown fox is very lazy and the cat sat on a mat"] * 4)
# WordLlama's trained prefix sizes in the tiny config (config/train/custom.toml).
MATRYOSHKA = [4, 8, 16]


def tiny_tokenizer(truncate: int | None = None) -> Tokenizer:
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    if truncate:
        tok.enable_truncation(truncate)
    return tok


def random_table(seed: int, rows: int = len(VOCAB), dim: int = DIM) -> np.ndarray:
    # A common offset, as trained tables have, so a dropped or extra token moves the cosine.
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, dim)) + 0.5).astype(np.float32)


def save_model2vec(
    out: Path,
    seed: int = 0,
    *,
    normalize: bool = True,
    max_length: int | None = 512,
    dtype: str = "float32",
    quantized_vocabulary: int | None = None,
) -> Path:
    """With model2vec's StaticModel.save_pretrained; quantized_vocabulary=K writes K cluster
    rows plus a token -> row mapping and per-token weights, as vocabulary quantisation does."""
    from model2vec import StaticModel

    table = random_table(seed)
    mapping = weights = None
    if quantized_vocabulary:
        rng = np.random.default_rng(seed + 100)
        mapping = rng.integers(0, quantized_vocabulary, len(VOCAB))
        weights = rng.uniform(0.2, 2.0, len(VOCAB))
        table = table[:quantized_vocabulary]
    model = StaticModel(
        vectors=table.astype(dtype),
        tokenizer=tiny_tokenizer(),
        config={"model_type": "model2vec", "apply_pca": None},
        normalize=normalize,
        max_length=max_length,
        weights=weights,
        token_mapping=mapping,
    )
    model.save_pretrained(out)
    return out


def save_static_embedding(
    out: Path, seed: int = 1, *, normalize: bool = True, truncate: int | None = None
) -> Path:
    """With sentence-transformers' SentenceTransformer.save: StaticEmbedding (+ Normalize)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    modules = [StaticEmbedding(tiny_tokenizer(truncate), embedding_weights=random_table(seed))]
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def save_wordllama(out: Path, seed: int = 2) -> Path:
    """The wheel's layout for a config named "custom" (what WordLlama.load calls a ModelURI
    config), DIM wide, trained for the MATRYOSHKA prefixes."""
    from safetensors.numpy import save_file

    (out / "weights").mkdir(parents=True)
    (out / "tokenizers").mkdir()
    (out / "config" / "train").mkdir(parents=True)
    save_file(
        {"embedding.weight": random_table(seed)}, str(out / "weights" / f"custom_{DIM}.safetensors")
    )
    tiny_tokenizer().save(str(out / "tokenizers" / "custom_tokenizer_config.json"))
    dims = ", ".join(map(str, sorted(MATRYOSHKA + [2 * DIM], reverse=True)))
    (out / "config" / "train" / "custom.toml").write_text(
        f"[tokenizer]\nmax_length = 8\n\n[matryoshka]\ndims = [{dims}]\n"
    )
    return out


def load_wordllama(folder: Path, trunc_dim: int | None = None):
    """The library's own loader on the tiny folder (downloads are off for custom configs)."""
    from wordllama import WordLlama
    from wordllama.config import ModelURI

    uri = ModelURI(
        repo_id="none/none",
        available_dims=MATRYOSHKA,
        binary_dims=[],
        tokenizer_config="custom_tokenizer_config.json",
    )
    return WordLlama.load(config=uri, cache_dir=folder, dim=DIM, trunc_dim=trunc_dim)
