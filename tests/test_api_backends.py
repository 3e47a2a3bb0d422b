"""The same request answered through torch on CPU, torch on CUDA and the OpenVINO IR agrees."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_app, write_models_list
from test_api_embeddings import TEXTS, post, vectors

from zeroth.api.state import state_of
from zeroth.manifest import Manifest

MANY = TEXTS + [" ".join(TEXTS * 30), "cat", "the the the"]


def _with_ir(src: Path, dest: Path) -> Path:
    from extract.openvino_export import export_openvino

    shutil.copytree(src, dest)
    spec = export_openvino(dest, "fp32")
    manifest = Manifest.read(dest)
    manifest.openvino = spec
    manifest.write(dest)
    return dest


@pytest.fixture(scope="module")
def backend_client(tmp_path_factory, tiny_ckpt: Path, tiny_ckpt_weighted: Path):
    root = tmp_path_factory.mktemp("backends")
    plain = _with_ir(tiny_ckpt, root / "plain")
    weighted = _with_ir(tiny_ckpt_weighted, root / "weighted")
    models = {
        "plain-torch": {"path": str(plain)},
        "plain-ov": {"path": str(plain), "backend": "openvino"},
        "weighted-torch": {"path": str(weighted)},
        "weighted-ov": {"path": str(weighted), "backend": "openvino"},
        "plain-auto": {"path": str(plain), "device": "auto"},
    }
    return make_app(write_models_list(root / "models_list.yaml", {"models": models})).test_client()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("name", ["plain", "weighted"])
def test_openvino_agrees_with_torch(backend_client, name: str) -> None:
    ref = vectors(post(backend_client, {"model": f"{name}-torch", "input": MANY}))
    got = vectors(post(backend_client, {"model": f"{name}-ov", "input": MANY}))
    assert _cosines(ref, got).min() >= 0.999
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # Batch independence holds on this backend too.
    alone = vectors(post(backend_client, {"model": f"{name}-ov", "input": MANY[1]}))
    np.testing.assert_allclose(alone[0], got[1], atol=1e-6)
    ids = post(backend_client, {"model": f"{name}-ov", "input": MANY, "dimensions": 3})
    assert vectors(ids).shape == (len(MANY), 3)


def test_auto_device_serves(backend_client) -> None:
    ref = vectors(post(backend_client, {"model": "plain-torch", "input": MANY}))
    got = vectors(post(backend_client, {"model": "plain-auto", "input": MANY}))
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.fixture(scope="module")
def cuda_client(tmp_path_factory, tiny_ckpt: Path, tiny_ckpt_weighted: Path):
    models = {
        "plain-torch": {"path": str(tiny_ckpt)},
        "plain-cuda": {"path": str(tiny_ckpt), "device": "cuda"},
        "plain-cuda-max": {"path": str(tiny_ckpt), "device": "cuda", "pooling": "max"},
        "plain-torch-max": {"path": str(tiny_ckpt), "pooling": "max"},
        "weighted-torch": {"path": str(tiny_ckpt_weighted)},
        "weighted-cuda": {"path": str(tiny_ckpt_weighted), "device": "cuda"},
    }
    path = write_models_list(tmp_path_factory.mktemp("cuda") / "m.yaml", {"models": models})
    return make_app(path).test_client()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["plain", "weighted", "plain-cuda-max"])
def test_cuda_agrees_with_cpu(cuda_client, name: str) -> None:
    on_cpu = f"{name}-torch" if "max" not in name else "plain-torch-max"
    on_gpu = f"{name}-cuda" if "max" not in name else name
    ref = vectors(post(cuda_client, {"model": on_cpu, "input": MANY}))
    got = vectors(post(cuda_client, {"model": on_gpu, "input": MANY, "encoding_format": "base64"}))
    assert _cosines(ref, got).min() >= 0.999
    np.testing.assert_allclose(got, ref, atol=1e-5)
    alone = vectors(post(cuda_client, {"model": on_gpu, "input": MANY[2]}))
    np.testing.assert_allclose(alone[0], got[2], atol=1e-6)


def _pooler(client, name: str):
    return state_of(client.application).registry.get(name).embedder.pooler


def test_cuda_table_is_placed_in_the_process_that_uses_it(cuda_or_cpu_client) -> None:
    """A preloaded gunicorn master must not initialise CUDA before it forks the workers."""
    client, name = cuda_or_cpu_client
    pooler = _pooler(client, name)
    assert pooler.module.table.device.type == "cpu"  # loaded, not yet used
    post(client, {"model": name, "input": MANY[:2]})
    assert pooler.module.table.device.type == pooler.device


@pytest.fixture
def cuda_or_cpu_client(tmp_path, tiny_ckpt: Path):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = write_models_list(
        tmp_path / "m.yaml", {"models": {"m": {"path": str(tiny_ckpt), "device": device}}}
    )
    return make_app(path).test_client(), "m"


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_under_preloaded_gunicorn(gunicorn_server, tmp_path, tiny_ckpt: Path) -> None:
    import json
    import urllib.request

    models = {"gpu": {"path": str(tiny_ckpt), "device": "cuda"}, "cpu": {"path": str(tiny_ckpt)}}
    server = gunicorn_server(
        write_models_list(tmp_path / "m.yaml", {"models": models}), workers=2, ready_timeout=60
    )

    def embed(model: str) -> np.ndarray:
        body = json.dumps({"model": model, "input": MANY}).encode()
        req = urllib.request.Request(
            f"{server.url}/v1/embeddings", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return np.array([d["embedding"] for d in json.load(resp)["data"]])

    # Several requests, so that both workers serve (and place their table) at least once.
    ref = embed("cpu")
    for _ in range(6):
        np.testing.assert_allclose(embed("gpu"), ref, atol=1e-5)
