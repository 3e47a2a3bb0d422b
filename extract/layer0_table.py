"""The contextless layer-0 table: decoder layer 0 run on every vocabulary token alone.

A token alone at position 0 attends only to itself, so self-attention reduces to
o_proj(v_proj(x)) (softmax over one key is 1; RoPE at position 0 is the identity) and the
layer's output depends on the token id alone: a static row per token, which folds into the
served table like any other. Serving is unchanged (one table, embedding_bag).

The source is the 1-layer checkpoint mergekit writes from the `[0, 1]` slice
(configs/layer0.yaml). transformers runs it, so each family's own conventions (Gemma's
sqrt(hidden) embedding scale, its sandwich norms, Qwen2's q/k/v biases) are applied by the
family's own code. The row is the output of decoder layer 0 itself, taken with a forward hook:
the model's final norm, which HF applies to the last hidden state, is not part of it.
Rows are RMS-normalised without a weight ("L0 plain"), then, by default, standardised per
dimension over the vocabulary and RMS-normalised again: layer 0's residual stream has a few
massive dimensions (Gemma 3: one holds ~40% of every row's energy) that otherwise swamp the
mean; the README's Quality section has the measurements.
"""

from __future__ import annotations

from pathlib import Path

import torch

from extract.errors import ExtractError
from zeroth.checkpoint import LAYER0_MEAN, LAYER0_STD

DEFAULT_CHUNK = 4096


def load_layer0_model(model_dir: Path) -> torch.nn.Module:
    """The decoder stack (no LM head) of a HF checkpoint, in float32, for inference."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExtractError(f"{model_dir}: cannot load layer 0: {first}") from exc
    if not hasattr(model, "layers") or len(model.layers) == 0:
        raise ExtractError(f"{model_dir}: no decoder layers (expected a [0, 1] slice)")
    return model.eval()


@torch.no_grad()
def layer0_outputs(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = False,
) -> torch.Tensor:
    """Decoder layer 0's output for each id as a one-token input at position 0, [N, H] fp32."""
    from tqdm.auto import tqdm

    captured: list[torch.Tensor] = []

    def grab(module, args, output):
        # A tuple (hidden_states, ...) in older transformers, the tensor itself in newer ones.
        hidden = output[0] if isinstance(output, tuple) else output
        captured.append(hidden[:, 0].to(torch.float32))
        # Nothing after layer 0 is needed: stop the forward pass here.
        raise _Done

    handle = model.layers[0].register_forward_hook(grab)
    # Filled in place: a list of chunks and a cat would hold the [V, H] table twice.
    out = torch.empty(len(token_ids), model.config.hidden_size)
    try:
        for start in tqdm(
            range(0, len(token_ids), chunk), desc="layer 0", unit=" chunks", disable=not progress
        ):
            ids = token_ids[start : start + chunk, None]
            try:
                model(input_ids=ids, use_cache=False)
            except _Done:
                pass
            out[start : start + len(ids)] = captured.pop()
    finally:
        handle.remove()
    return out


class _Done(Exception):
    pass


def plain_rows(outputs: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise with no weight, in place: only each row's direction and unit RMS are kept.
    (In place and via the row norms: a Gemma-sized table is 670 MB a copy.)"""
    mean_square = torch.linalg.vector_norm(outputs, dim=-1, keepdim=True).square_()
    return outputs.mul_(mean_square.div_(outputs.shape[1]).add_(eps).rsqrt_())


def standardise(rows: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float):
    """(rows - mean) / std per dimension, then RMS-normalised again; in place."""
    return plain_rows(rows.sub_(mean).div_(std.clamp_min(1e-12)), eps)


def layer0_table(
    model_dir: Path,
    eps: float,
    standardised: bool = True,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One row per embed_tokens row, [V, H] fp32: the served table before post-processing; and
    the per-dimension statistics it was standardised with (empty when not), which the parity
    check needs since one token's row depends on them."""
    model = load_layer0_model(model_dir)
    ids = torch.arange(model.get_input_embeddings().num_embeddings)
    outputs = layer0_outputs(model, ids, chunk, progress)
    del model
    rows = plain_rows(outputs, eps)
    if not standardised:
        return rows, {}
    stats = {LAYER0_MEAN: rows.mean(0), LAYER0_STD: rows.std(0)}
    return standardise(rows, stats[LAYER0_MEAN], stats[LAYER0_STD], eps), stats
