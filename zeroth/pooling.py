"""Poolers: ragged token ids in, one (un-normalised) vector per input out.

Inputs arrive as one flat int64 id array plus the start offset of each input, as
`torch.nn.functional.embedding_bag` takes them, so nothing is padded.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from zeroth.fold import FoldedTable


class Pooler(Protocol):
    dim: int
    device: str

    def pool(
        self, flat_ids: np.ndarray, offsets: np.ndarray, direction_only: bool = False
    ) -> np.ndarray:
        """[n_inputs, dim] float32 means; with direction_only, any positive multiple of
        each mean (for callers that L2-normalise anyway)."""
        ...


def cuda_available() -> bool:
    # The default check initialises CUDA, after which no forked gunicorn worker can use it;
    # asking NVML instead leaves CUDA untouched until a worker first pools.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
    return device


class BagModule(torch.nn.Module):
    """Weighted mean over a folded table; also the graph exported to OpenVINO."""

    def __init__(self, folded: FoldedTable, mode: str = "mean"):
        super().__init__()
        self.mode = mode
        self.table = torch.nn.Parameter(folded.table, requires_grad=False)
        w = folded.weights
        self.weighted = w is not None and mode == "mean"
        if self.weighted:
            self.weights = torch.nn.Parameter(w[:, None].contiguous(), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        if not self.weighted:
            return F.embedding_bag(input_ids, self.table, offsets, mode=self.mode)
        denom = F.embedding_bag(input_ids, self.weights, offsets, mode="sum")
        return self.weighted_sum(input_ids, offsets) / denom.clamp_min(1e-30)

    def weighted_sum(self, input_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The weighted mean times the bag's positive weight total: same direction."""
        return F.embedding_bag(input_ids, self.table, offsets, mode="sum")


class TorchPooler:
    def __init__(self, folded: FoldedTable, device: str = "cpu", mode: str = "mean"):
        self.device = resolve_device(device)
        self.module = BagModule(folded, mode).eval()
        self.dim = folded.table.shape[1]
        # CUDA cannot be used in a process forked after it was initialised, and gunicorn forks
        # its workers from a master that loaded the models: the table moves to the GPU on first
        # use, in the process that uses it.
        self._placed_in = os.getpid() if self.device == "cpu" else None
        self._placing = threading.Lock()

    def _module(self) -> BagModule:
        if self._placed_in != os.getpid():
            with self._placing:
                if self._placed_in != os.getpid():
                    self.module.to(self.device)
                    self._placed_in = os.getpid()
        return self.module

    def pool(
        self, flat_ids: np.ndarray, offsets: np.ndarray, direction_only: bool = False
    ) -> np.ndarray:
        # No grad mode needed: nothing here requires grad, and entering one costs ~7 us.
        ids = torch.from_numpy(flat_ids).to(self.device)
        offs = torch.from_numpy(offsets).to(self.device)
        m = self._module()
        # L2 normalisation cancels the weights' denominator: skip its second embedding_bag.
        out = m.weighted_sum(ids, offs) if direction_only and m.weighted else m(ids, offs)
        return out.float().cpu().numpy()


class OpenVINOPooler:
    """Runs the IR written by `extract --openvino` (same graph as BagModule)."""

    device = "cpu"

    def __init__(self, xml_path: str | Path):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(xml_path))
        # The CPU plugin defaults to bf16 on AVX-512-BF16 machines; ask for fp32 math.
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.dim = int(self.compiled.output(0).get_partial_shape()[1].get_length())

    def pool(
        self, flat_ids: np.ndarray, offsets: np.ndarray, direction_only: bool = False
    ) -> np.ndarray:
        # A fresh infer request per call keeps concurrent threads from sharing one.
        result = self.compiled.create_infer_request().infer([flat_ids, offsets])
        return np.asarray(result[0], dtype=np.float32)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    # einsum: the row norms without np.linalg.norm's per-call overhead (a few us a request).
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    return vectors / np.maximum(norms, 1e-12)[:, None]
