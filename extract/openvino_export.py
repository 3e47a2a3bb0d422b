"""Export a checkpoint's pooling graph (flat ids + offsets -> mean vector) to OpenVINO IR.

The graph is zeroth.pooling.BagModule over the folded table, so the IR and the torch path
share one definition; its accuracy against torch on a fixed probe set goes into the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from extract.errors import ExtractError
from zeroth.checkpoint import Checkpoint
from zeroth.manifest import OpenVINOSpec
from zeroth.model import folded_table
from zeroth.pooling import BagModule, OpenVINOPooler, TorchPooler, l2_normalise
from zeroth.tokenizer import load_tokenizer

IR_DIR = "openvino"
IR_NAME = "model.xml"
Weights = Literal["fp32", "fp16", "int8"]
# Below this the IR is broken, not merely quantised.
MIN_COSINE = 0.99
PROBE_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "Le chat est assis sur le tapis.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "def add(a, b):\n    return a + b",
    "a",
    "OpenAI-compatible embeddings server, self-hosted, 1234567890 !?",
)


def probe_ids(ckpt: Checkpoint) -> list[list[int]]:
    """Fixed probe inputs: real sentences plus seeded random bags spanning the whole vocabulary."""
    tokenizer = load_tokenizer(ckpt.tokenizer_dir / ckpt.manifest.tokenizer.file)
    add_special = ckpt.manifest.tokenizer.add_special_tokens
    ids = [
        e.ids for e in tokenizer.encode_batch(list(PROBE_SENTENCES), add_special_tokens=add_special)
    ]
    vocab = ckpt.manifest.vocab_size
    rng = np.random.default_rng(0)
    ids += [rng.integers(0, vocab, size=n).tolist() for n in (1, 3, 17, 64, 300)]
    ids += [[0], [vocab - 1]]
    return [row for row in ids if row]


def _quantise_int8(model) -> None:
    """Per-row symmetric int8 for the tables behind EmbeddingBagOffsets.

    nncf.compress_weights only compresses MatMul/Gather/Convolution weights and leaves
    EmbeddingBagOffsets tables alone, so build the same decompression pattern it emits
    (int8 constant -> Convert -> Multiply by scale) by hand.
    """
    import openvino as ov
    import openvino.opset13 as ops

    replaced = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "EmbeddingBagOffsets":
            continue
        table = op.input(0).get_source_output().get_node()
        if table.get_type_name() != "Constant":
            continue
        w = table.get_data().astype(np.float32)
        scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        deq = ops.multiply(ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale))
        op.input(0).replace_source_output(deq.output(0))
        replaced += 1
    if not replaced:
        raise ExtractError("int8: found no embedding table to compress in the OpenVINO graph")
    model.validate_nodes_and_infer_types()


def export_openvino(ckpt_dir: Path, weights: Weights) -> OpenVINOSpec:
    """Write <ckpt_dir>/openvino/model.xml and return its spec (accuracy vs torch included)."""
    import openvino as ov

    ckpt = Checkpoint.from_pretrained(ckpt_dir)
    folded = folded_table(ckpt)
    module = BagModule(folded).eval()
    example = (torch.tensor([1, 2, 3], dtype=torch.long), torch.tensor([0, 1], dtype=torch.long))
    model = ov.convert_model(
        module,
        example_input=example,
        input=[("input_ids", [-1], ov.Type.i64), ("offsets", [-1], ov.Type.i64)],
    )
    if weights == "int8":
        _quantise_int8(model)
    xml = ckpt_dir / IR_DIR / IR_NAME
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=weights == "fp16")

    ids = probe_ids(ckpt)
    lengths = np.array([len(r) for r in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in ids])
    ref = TorchPooler(folded).pool(flat, offsets)
    # A bag of weight-0 tokens alone (an imported model2vec's unknown token) pools to zero:
    # it has no direction to compare, only a difference.
    live = np.linalg.norm(ref, axis=1) > 0
    ref = l2_normalise(ref)
    got = l2_normalise(OpenVINOPooler(xml).pool(flat, offsets))
    max_abs_diff = float(np.abs(ref - got).max())
    min_cosine = float((ref * got).sum(axis=1)[live].min())
    if not min_cosine >= MIN_COSINE:
        raise ExtractError(
            f"OpenVINO IR ({weights}) disagrees with torch: min cosine {min_cosine:.4f}"
        )
    return OpenVINOSpec(
        xml=f"{IR_DIR}/{IR_NAME}",
        weights=weights,
        max_abs_diff=max_abs_diff,
        min_cosine=min_cosine,
    )
