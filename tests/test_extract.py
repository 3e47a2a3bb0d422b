"""Extraction on tiny random models: checkpoint vectors equal the full HF model's hooked norm."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from extract.aliases import add_aliases
from extract.cli import build_parser, main
from extract.errors import ExtractError
from extract.mergekit_run import CONFIGS_DIR, SLICE_TEMPLATES, render_config
from extract.prune import read_embed_and_norm
from tests.tiny_models import SENTENCES, SPECS, VOCAB_SIZE, save_tiny_model
from zeroth.evaluation.parity import hooked_norm_outputs
from zeroth.families import FAMILIES, HF_DECODER, TensorNames
from zeroth.manifest import Manifest
from zeroth.model import StaticEmbedder

REPO = Path(__file__).resolve().parents[1]
FAMILY_NAMES = list(SPECS)
# Switch every quality lever off, so the checkpoint must reproduce the model exactly.
RAW = [
    "--weighting",
    "none",
    "--no-center",
    "--remove-components",
    "0",
    "--eval-dir",
    "/nonexistent",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    # "+" and "@" mean LoRA and revision in mergekit's string model references.
    root = tmp_path_factory.mktemp("tiny+models@v1")
    return {name: save_tiny_model(name, root / name, seed=i) for i, name in enumerate(SPECS)}


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main([str(a) for a in args] + ["-q"])
    return rc, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def hf_pooled(model_dir: Path, norm: str, batch: list[list[int]]) -> np.ndarray:
    """Run the full HF model on each input, hook the chosen norm's output, mean-pool, L2."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pooled = torch.stack([hooked_norm_outputs(model, norm, row).mean(0) for row in batch])
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def probe_batch(embedder: StaticEmbedder) -> list[list[int]]:
    rng = np.random.default_rng(1)
    random_rows = [rng.integers(0, VOCAB_SIZE, size=n).tolist() for n in (5, 1, 13)]
    return embedder.tokenize(SENTENCES) + random_rows


@pytest.mark.parametrize("norm", ["final", "layer0"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_checkpoint_matches_full_model(tiny, tmp_path, capsys, family, norm):
    out = tmp_path / "ckpt"
    rc, err = run_cli([tiny[family], "--out", out, "--norm", norm, *RAW], capsys)
    assert rc == 0, err
    embedder = StaticEmbedder.from_pretrained(out)
    batch = probe_batch(embedder)
    assert len({len(r) for r in batch}) > 3  # really ragged
    got = embedder.embed_ids(batch)
    want = hf_pooled(tiny[family], norm, batch)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # The other norm gives different vectors, so the check above can tell them apart.
    other = hf_pooled(tiny[family], "final" if norm == "layer0" else "layer0", batch)
    assert np.abs(got - other).max() > 1e-3


def test_manifest_records_family_conventions(tiny, tmp_path, capsys):
    out = tmp_path / "g3"
    rc, err = run_cli([tiny["gemma3"], "--out", out, "--norm", "layer0", *RAW], capsys)
    assert rc == 0, err
    m = Manifest.read(out)
    config = json.loads((tiny["gemma3"] / "config.json").read_text())
    assert (m.family, m.architecture) == ("gemma3", "Gemma3ForCausalLM")
    assert (m.vocab_size, m.hidden_size) == (config["vocab_size"], config["hidden_size"])
    assert m.embed_scale == pytest.approx(math.sqrt(config["hidden_size"]))
    assert (m.norm.source, m.norm.eps, m.norm.offset) == ("layer0", config["rms_norm_eps"], 1.0)
    assert (m.tokenizer.bos_token_id, m.tokenizer.eos_token_id, m.tokenizer.pad_token_id) == (
        1,
        2,
        0,
    )
    assert m.tokenizer.add_special_tokens
    assert (m.source.kind, m.source.id) == ("hf_dir", str(tiny["gemma3"]))
    assert m.extraction["layer_range"] == [0, 1] and m.extraction["template"] == "layer0.yaml"
    assert {"mergekit", "transformers", "torch", "safetensors", "zeroth"} <= set(m.tools)
    assert m.openvino is None
    # Only the two kept tensors, and the tokenizer files that serve them.
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == {"embed_tokens", "norm"}
    assert (out / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g3"]  # no staging dir left

    llama = tmp_path / "llama"
    assert run_cli([tiny["llama"], "--out", llama, "--table", "embed", *RAW], capsys)[0] == 0
    m = Manifest.read(llama)
    assert (m.embed_scale, m.norm.offset, m.norm.source) == (1.0, 0.0, "final")
    assert m.extraction["layer_range"] == [0, 0]
    assert m.extraction["template"] == "final-norm.yaml"


def test_dtype_options(tiny, tmp_path, capsys):
    sizes, vectors = {}, {}
    for dtype in ("float32", "float16", "bfloat16"):
        out = tmp_path / dtype
        argv = [tiny["mistral"], "--out", out, "--dtype", dtype, "--table", "embed", *RAW]
        rc, err = run_cli(argv, capsys)
        assert rc == 0, err
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert str(f.get_tensor("embed_tokens").dtype) == f"torch.{dtype}"
            assert f.get_tensor("norm").dtype == torch.float32
        sizes[dtype] = (out / "model.safetensors").stat().st_size
        vectors[dtype] = StaticEmbedder.from_pretrained(out).embed_ids([[3, 4, 5], [9]])
    assert sizes["float16"] == sizes["bfloat16"]
    assert 0.45 < sizes["float16"] / sizes["float32"] < 0.55
    for dtype in ("float16", "bfloat16"):
        cosine = (vectors[dtype] * vectors["float32"]).sum(1)
        assert cosine.min() > 0.999


def test_existing_output_needs_force(tiny, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert run_cli([tiny["llama"], "--out", out, "--norm", "final", *RAW], capsys)[0] == 0
    rc, err = run_cli([tiny["llama"], "--out", out, "--norm", "layer0", *RAW], capsys)
    assert rc == 2 and "already exists" in one_line_error(err)
    assert Manifest.read(out).norm.source == "final"
    rc, err = run_cli([tiny["llama"], "--out", out, "--norm", "layer0", "--force", *RAW], capsys)
    assert rc == 0, err
    assert Manifest.read(out).norm.source == "layer0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_missing_tensor_fails_cleanly_and_keeps_old_output(tiny, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny["llama"], broken)
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})

    fresh = tmp_path / "fresh"
    rc, err = run_cli([broken, "--out", fresh, *RAW], capsys)
    assert rc == 1 and "model.norm.weight" in one_line_error(err)
    assert not fresh.exists()

    old = tmp_path / "old"
    assert run_cli([tiny["llama"], "--out", old, *RAW], capsys)[0] == 0
    before = (old / "model.safetensors").read_bytes()
    rc, err = run_cli([broken, "--out", old, "--force", *RAW], capsys)
    assert rc == 1 and "model.norm.weight" in one_line_error(err)
    assert (old / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "old"]


def test_prune_reports_missing_tensor(tiny, tmp_path):
    embed, norm = read_embed_and_norm(tiny["qwen2"], "layer0")
    assert embed.shape == (VOCAB_SIZE, 64) and norm.shape == (64,)
    save_file({"model.embed_tokens.weight": embed}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ExtractError, match=r"missing tensor\(s\) model.norm.weight"):
        read_embed_and_norm(tmp_path, "final")


def test_prune_reads_the_tensor_names_it_is_given(tiny, tmp_path):
    """A family whose checkpoints nest the decoder (Gemma 3's multimodal ones do) only needs
    other TensorNames: the names come from the family, not from extract/prune.py."""
    tensors = load_file(str(tiny["llama"] / "model.safetensors"))
    nested = {f"language_model.{k}": v for k, v in tensors.items()}
    save_file(nested, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    names = TensorNames(
        embed="language_model.model.embed_tokens.weight",
        final_norm="language_model.model.norm.weight",
        layer0="language_model.model.layers.0.",
        layer0_norm="language_model.model.layers.0.input_layernorm.weight",
    )
    for norm, key in (("final", "model.norm.weight"), ("layer0", HF_DECODER.layer0_norm)):
        embed, weight = read_embed_and_norm(tmp_path, norm, names)
        torch.testing.assert_close(embed, tensors[HF_DECODER.embed])
        torch.testing.assert_close(weight, tensors[key])
    with pytest.raises(ExtractError, match=r"missing tensor\(s\) model.embed_tokens.weight"):
        read_embed_and_norm(tmp_path, "final")


def test_unknown_family_is_one_line(tiny, tmp_path, capsys):
    odd = tmp_path / "odd"
    shutil.copytree(tiny["llama"], odd)
    config = json.loads((odd / "config.json").read_text())
    config.update(architectures=["FooForCausalLM"], model_type="foo")
    (odd / "config.json").write_text(json.dumps(config))
    rc, err = run_cli([odd, "--out", tmp_path / "out", *RAW], capsys)
    assert rc == 1 and "cannot detect the model family" in one_line_error(err)
    assert "--family" in err
    assert not (tmp_path / "out").exists()


def test_family_override_is_recorded(tiny, tmp_path, capsys):
    out = tmp_path / "ckpt"
    rc, err = run_cli([tiny["llama"], "--out", out, "--family", "mistral", *RAW], capsys)
    assert rc == 0, err
    m = Manifest.read(out)
    assert (m.family, m.extraction["family"]) == ("mistral", "given")


def test_bad_sources_are_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(4096))
    rc, err = run_cli([garbage, "--out", tmp_path / "a", "--cache-dir", tmp_path / "c"], capsys)
    assert rc == 1 and "not a GGUF file" in one_line_error(err)

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + os.urandom(4096))
    rc, err = run_cli([truncated, "--out", tmp_path / "b", "--cache-dir", tmp_path / "c"], capsys)
    assert rc == 1 and "cannot read GGUF" in one_line_error(err)
    # The failed conversion leaves nothing in the cache.
    assert not any((tmp_path / "c" / "hf").iterdir())

    rc, err = run_cli([tmp_path / "nope", "--out", tmp_path / "d"], capsys)
    assert rc == 1 and "no such file or directory" in one_line_error(err)
    no_config = tmp_path / "empty"
    no_config.mkdir()
    rc, err = run_cli([no_config, "--out", tmp_path / "e"], capsys)
    assert rc == 1 and "no config.json" in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c",
        "empty",
        "garbage.gguf",
        "truncated.gguf",
    ]


def test_hub_id_offline_is_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "extract",
            "no-such-org/no-such-model",
            "--out",
            tmp_path / "o",
            "-q",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    line = one_line_error(proc.stderr)
    assert "no-such-org/no-such-model" in line and "hub" in line
    assert not (tmp_path / "o").exists()


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--out", "--force", "--family", "--norm", "--dtype", "--add-special-tokens", "--openvino",
        "--ov-weights", "--alias", "--models-list", "--revision", "--cache-dir", "--weighting",
        "--table", "--component-removal",
    ):  # fmt: skip
        assert option in text
    assert "gemma3" in text and "examples:" in text


ALIASES_BEFORE = """\
# Which checkpoint answers which OpenAI model name.
models:
  # the big one
  text-embedding-3-large:
    path: elsewhere/big     # keep me
    backend: openvino
  text-embedding-ada-002: {path: old/path, device: cpu}
default: text-embedding-3-large   # chosen by hand
"""


def test_aliases_keep_comments_and_other_entries(tmp_path):
    models_list = tmp_path / "conf" / "models_list.yaml"
    models_list.parent.mkdir()
    models_list.write_text(ALIASES_BEFORE)
    ckpt = tmp_path / "models" / "smol"
    add_aliases(models_list, ckpt, ["text-embedding-ada-002", "text-embedding-3-small"])
    text = models_list.read_text()
    for kept in ("# Which checkpoint", "# the big one", "# keep me", "# chosen by hand"):
        assert kept in text
    import yaml

    data = yaml.safe_load(text)
    assert data["default"] == "text-embedding-3-large"
    assert data["models"]["text-embedding-3-large"] == {
        "path": "elsewhere/big",
        "backend": "openvino",
    }
    assert data["models"]["text-embedding-ada-002"] == {"path": "../models/smol", "device": "cpu"}
    assert data["models"]["text-embedding-3-small"] == {"path": "../models/smol"}

    fresh = tmp_path / "new.yaml"
    add_aliases(fresh, ckpt, ["a"])
    assert yaml.safe_load(fresh.read_text()) == {"models": {"a": {"path": "models/smol"}}}


def test_cli_alias_writes_models_list(tiny, tmp_path, capsys):
    models_list = tmp_path / "models_list.yaml"
    out = tmp_path / "models" / "tiny"
    args = [
        tiny["gemma"],
        "--out",
        out,
        "--alias",
        "x",
        "--alias",
        "y",
        "--models-list",
        models_list,
    ]
    rc, err = run_cli(args + RAW, capsys)
    assert rc == 0, err
    import yaml

    models = yaml.safe_load(models_list.read_text())["models"]
    assert models == {"x": {"path": "models/tiny"}, "y": {"path": "models/tiny"}}


def test_one_template_per_slice():
    """--norm picks the slice; every family uses the same templates (tensor names are the
    family's TensorNames, not a template of its own)."""
    norms = next(a for a in build_parser()._actions if a.dest == "norm").choices
    assert set(SLICE_TEMPLATES) == set(norms)
    assert {p.stem for p in CONFIGS_DIR.glob("*.yaml")} == set(SLICE_TEMPLATES.values())
    for norm, template in SLICE_TEMPLATES.items():
        config = render_config(template, Path("/a+b@c"), "bfloat16")
        assert config["merge_method"] == "passthrough" and config["dtype"] == "bfloat16"
        (source,) = config["slices"][0]["sources"]
        # [0, 0]: the embeddings and the final norm; [0, 1]: layer 0 (and its input norm) too.
        layers = 0 if norm == "final" else 1
        assert source == {"model": {"model": {"path": "/a+b@c"}}, "layer_range": [0, layers]}
        raw = (CONFIGS_DIR / f"{template}.yaml").read_text()
        assert f"python -m extract.mergekit_run configs/{template}.yaml" in raw and "EDIT" in raw
    for family in FAMILIES.values():
        assert family.tensors.norm("final") == family.tensors.final_norm
        assert family.tensors.norm("layer0") == family.tensors.layer0_norm
        assert family.tensors.layer0_norm.startswith(family.tensors.layer0)


def _by_hand(cmd: list[str], template: str, source: Path, out: Path, tmp_path: Path) -> None:
    text = (CONFIGS_DIR / f"{template}.yaml").read_text()
    config = tmp_path / f"{out.name}.yaml"
    config.write_text(text.replace("/path/to/hf-model", str(source)))
    proc = subprocess.run(
        [*cmd, str(config), str(out), "--no-write-model-card"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_templates_usable_by_hand(tiny, tmp_path):
    """The documented by-hand commands: the fixed runner on every slice (Gemma 3, whose
    `layer_types` plain mergekit-yaml fails to write), and plain mergekit-yaml for Llama."""
    runner = [sys.executable, "-m", "extract.mergekit_run"]
    mergekit_yaml = [str(Path(sys.executable).parent / "mergekit-yaml")]
    # Paths without "+" or "@", which mergekit would read as a LoRA or a revision.
    gemma3 = shutil.copytree(tiny["gemma3"], tmp_path / "gemma3")
    llama = shutil.copytree(tiny["llama"], tmp_path / "llama")
    runs = [(runner, norm, template, gemma3) for norm, template in SLICE_TEMPLATES.items()]
    runs.append((mergekit_yaml, "final", "final-norm", llama))
    for cmd, norm, template, source in runs:
        out = tmp_path / f"{source.name}-{template}-{Path(cmd[-1]).name}"
        _by_hand(cmd, template, source, out, tmp_path)
        embed, weight = read_embed_and_norm(out, norm)
        assert embed.shape == (VOCAB_SIZE, 64) and weight.shape == (64,)
        layers = json.loads((out / "config.json").read_text())["num_hidden_layers"]
        assert layers == (0 if norm == "final" else 1), (template, source.name)


@pytest.mark.parametrize("weights", ["fp32", "fp16", "int8"])
def test_openvino_ir_matches_torch(tiny, tmp_path, capsys, weights):
    out = tmp_path / "ckpt"
    # int8 runs with the default quality levers, so the weighted graph is exported too.
    extra = ["--eval-dir", "/nonexistent"] if weights == "int8" else RAW
    args = [tiny["llama"], "--out", out, "--openvino", "--ov-weights", weights, *extra]
    rc, err = run_cli(args, capsys)
    assert rc == 0, err
    m = Manifest.read(out)
    assert m.openvino.xml == "openvino/model.xml" and m.openvino.weights == weights
    assert (out / m.openvino.xml).is_file() and "openvino" in m.tools
    torch_path = StaticEmbedder.from_pretrained(out)
    ov_path = StaticEmbedder.from_pretrained(out, backend="openvino")
    batch = probe_batch(torch_path)
    ref, got = torch_path.embed_ids(batch), ov_path.embed_ids(batch)
    diff, cosine = np.abs(ref - got).max(), (ref * got).sum(1).min()
    if weights == "fp32":
        assert m.openvino.max_abs_diff <= 1e-4 and diff <= 1e-4
    elif weights == "fp16":
        assert m.openvino.min_cosine >= 0.999 and cosine >= 0.999
    else:
        assert m.postprocess.weighting == "sif"
        assert m.openvino.min_cosine >= 0.99 and cosine >= 0.99
        bin_size = (out / "openvino" / "model.bin").stat().st_size
        assert bin_size < 0.5 * (out / "model.safetensors").stat().st_size


def test_bad_models_list_fails_before_extracting(tiny, tmp_path, capsys):
    models_list = tmp_path / "models_list.yaml"
    models_list.write_text("models: [not, a, mapping]\n")
    out = tmp_path / "ckpt"
    args = [tiny["llama"], "--out", out, "--alias", "x", "--models-list", models_list, *RAW]
    rc, err = run_cli(args, capsys)
    assert rc == 1 and "must be a mapping" in one_line_error(err)
    assert not out.exists()
    assert models_list.read_text() == "models: [not, a, mapping]\n"
