"""Tiny random causal LMs saved as HF checkpoints, for extraction tests.

Each model is a real transformers model (2 layers, hidden 64) with randomised norm weights, so a
wrong norm, scale or offset changes the vectors; its tokenizer is a WordLevel `tokenizers`
tokenizer over a small vocabulary, wrapped in PreTrainedTokenizerFast so mergekit copies it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

VOCAB_SIZE = 320
HIDDEN = 64
WORDS = (
    "the a an cat dog bird fish sat ran flew swam on under over mat log tree sea "
    "quick brown lazy red blue green small big old new is was and or not very"
).split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SENTENCES = [
    "the cat sat on the mat",
    "a quick brown dog ran",
    "fish swam under the old blue sea and the big red bird flew over a tree",
    "lazy",
]

_COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=HIDDEN,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    pad_token_id=PAD_ID,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
)

# family -> (config class, model class, extra config, does the tokenizer add BOS)
SPECS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"rms_norm_eps": 1e-5}, False),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"rms_norm_eps": 1e-5}, False),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"rms_norm_eps": 1e-6}, False),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 16, "rms_norm_eps": 1e-6}, True),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "rms_norm_eps": 1e-6}, True),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {"head_dim": 16, "rms_norm_eps": 1e-6, "sliding_window": 16},
        True,
    ),
}


def make_tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", BOS_ID)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def make_model(family: str, seed: int = 0) -> transformers.PreTrainedModel:
    config_cls, model_cls, extra, _ = SPECS[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**_COMMON, **extra)
    config.architectures = [model_cls]
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        # Default norm weights are all ones (or zeros for Gemma): make every one distinct.
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(torch.randn_like(param) * 0.5 + 0.2)
            elif "embed_tokens" in name:
                param.copy_(torch.randn_like(param) * 0.3)
    return model


def save_tiny_model(family: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny random `family` model + tokenizer to `out` (a HF checkpoint directory)."""
    out = Path(out)
    model = make_model(family, seed)
    model.save_pretrained(out)
    make_tokenizer(SPECS[family][3]).save_pretrained(out)
    return out
