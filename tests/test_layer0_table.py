"""The contextless layer-0 table (--table layer0) on tiny models of every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from extract.cli import main
from tests.test_extract import RAW, one_line_error, probe_batch, run_cli
from tests.tiny_models import SPECS, VOCAB_SIZE, save_tiny_model
from zeroth.checkpoint import LAYER0_MEAN, LAYER0_STD, Checkpoint
from zeroth.evaluation.parity import reference_vectors
from zeroth.manifest import Manifest
from zeroth.model import StaticEmbedder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {name: save_tiny_model(name, root / name, seed=i) for i, name in enumerate(SPECS)}


def hf_layer0_alone(model_dir, eps: float) -> torch.Tensor:
    """Each token as a one-token input to the full (2-layer) model: its layer-0 hidden state,
    RMS-normalised with no weight, [V, H]. hidden_states[1] is layer 0's output; only the last
    entry has the final norm applied."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert model.config.num_hidden_layers > 1
    with torch.no_grad():
        out = model(input_ids=torch.arange(VOCAB_SIZE)[:, None], output_hidden_states=True)
    x = out.hidden_states[1][:, 0].double()
    return (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)).float()


@pytest.mark.parametrize("family", list(SPECS))
def test_rows_are_the_full_models_layer0_output_per_token(tiny, tmp_path, capsys, family):
    out = tmp_path / "l0"
    argv = [tiny[family], "--out", out, "--table", "layer0", "--no-standardise", *RAW]
    rc, err = run_cli(argv, capsys)
    assert rc == 0, err
    ckpt = Checkpoint.from_pretrained(out)
    m = ckpt.manifest
    assert m.norm is None and m.embed_scale == 1.0  # both are inside the stored rows
    assert m.extraction["table"] == "layer0 output, RMS-normalised"
    assert m.extraction["layer_range"] == [0, 1]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == {"embed_tokens"}
    eps = SPECS[family][2]["rms_norm_eps"]
    want = hf_layer0_alone(tiny[family], eps)
    np.testing.assert_allclose(ckpt.token_rows().numpy(), want.numpy(), rtol=0, atol=2e-5)
    # Serving pools exactly those rows.
    embedder = StaticEmbedder.from_pretrained(out)
    batch = probe_batch(embedder)
    pooled = torch.nn.functional.normalize(torch.stack([want[r].mean(0) for r in batch]), dim=-1)
    np.testing.assert_allclose(embedder.embed_ids(batch), pooled.numpy(), atol=1e-5)
    # Not the embedding table itself, so the check above tells the two apart.
    embed = run_cli([tiny[family], "--out", tmp_path / "e", "--table", "embed", *RAW], capsys)
    assert embed[0] == 0
    assert (
        np.abs(
            StaticEmbedder.from_pretrained(tmp_path / "e").embed_ids(batch) - pooled.numpy()
        ).max()
        > 1e-2
    )


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_standardised_rows(tiny, tmp_path, capsys, family):
    """Default: each dimension of the plain rows centred and scaled to unit variance over the
    vocabulary, then each row RMS-normalised again; the statistics are kept for parity."""
    out = tmp_path / "std"
    rc, err = run_cli([tiny[family], "--out", out, *RAW], capsys)
    assert rc == 0, err
    ckpt = Checkpoint.from_pretrained(out)
    assert "standardised" in ckpt.manifest.extraction["table"]
    plain = hf_layer0_alone(tiny[family], SPECS[family][2]["rms_norm_eps"]).double()
    mean, std = plain.mean(0), plain.std(0)
    np.testing.assert_allclose(ckpt.tensors[LAYER0_MEAN].numpy(), mean.numpy(), atol=2e-5)
    np.testing.assert_allclose(ckpt.tensors[LAYER0_STD].numpy(), std.numpy(), rtol=1e-4)
    z = (plain - mean) / std
    want = z / z.pow(2).mean(-1, keepdim=True).sqrt()
    np.testing.assert_allclose(ckpt.token_rows().numpy(), want.numpy(), atol=1e-4)
    assert np.abs(want.numpy() - plain.numpy()).max() > 0.1


def test_layer0_is_the_default_and_norm_selects_embed(tiny, tmp_path, capsys):
    assert run_cli([tiny["llama"], "--out", tmp_path / "d", *RAW], capsys)[0] == 0
    assert Manifest.read(tmp_path / "d").norm is None
    assert (
        run_cli([tiny["llama"], "--out", tmp_path / "n", "--norm", "layer0", *RAW], capsys)[0] == 0
    )
    m = Manifest.read(tmp_path / "n")
    assert m.norm.source == "layer0" and m.extraction["table"] == "embed_tokens"
    assert (
        run_cli([tiny["llama"], "--out", tmp_path / "e", "--table", "embed", *RAW], capsys)[0] == 0
    )
    assert Manifest.read(tmp_path / "e").norm.source == "final"


def test_norm_is_refused_with_the_layer0_table(tiny, tmp_path, capsys):
    rc, err = run_cli(
        [tiny["llama"], "--out", tmp_path / "x", "--table", "layer0", "--norm", "final"], capsys
    )
    assert rc == 2
    assert "--norm applies to --table embed only" in one_line_error(err)
    assert not (tmp_path / "x").exists()
    rc, err = run_cli(
        [tiny["llama"], "--out", tmp_path / "y", "--table", "embed", "--standardise"], capsys
    )
    assert rc == 2 and "--standardise applies to --table layer0" in one_line_error(err)
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "--table {layer0,embed}" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_parity_reference_runs_layer0_on_each_token(tiny, tmp_path, capsys, family):
    out = tmp_path / "l0"
    rc, err = run_cli([tiny[family], "--out", out, "--eval-dir", "/nonexistent"], capsys)
    assert rc == 0, err
    ckpt = Checkpoint.from_pretrained(out)
    embedder = StaticEmbedder.from_pretrained(out)
    batch = probe_batch(embedder)
    full = AutoModelForCausalLM.from_pretrained(tiny[family], dtype=torch.float32).eval()
    expected = reference_vectors(ckpt, full, batch)
    np.testing.assert_allclose(embedder.embed_ids(batch), expected, atol=1e-5)
