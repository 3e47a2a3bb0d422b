"""The teacher of `--teacher`: a sentence-transformers folder, and its vectors cached on disk.

Encoding the corpus is the slow part of an aligned build (minutes on a few cores; the fit
takes seconds), so the unit vectors are stored under CACHE/teacher/, keyed by the teacher's
files and the texts exactly as read. A rerun with another lambda or prior reads them back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Encoder = Callable[[Sequence[str]], np.ndarray]

# Files that decide a sentence-transformers model's output (weights, config, tokenizer,
# module list); README and such are left out so a docs edit keeps the cache.
_KEY_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
_KEY_SKIP = ("README.md",)


def is_teacher_dir(path: Path) -> bool:
    names = ("modules.json", "config_sentence_transformers.json")
    return any((path / name).is_file() for name in names)


def folder_hash(path: Path) -> str:
    """sha256 over the relative names and bytes of the files that shape the output."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.suffix not in _KEY_SUFFIXES or file.name in _KEY_SKIP:
            continue
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def texts_hash(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


@dataclass
class Teacher:
    path: Path
    sha256: str
    encode: Encoder  # texts -> [n, d] float32 unit rows

    @property
    def name(self) -> str:
        return self.path.name


def load_teacher(path: Path, batch_size: int = 64, progress: bool = True) -> Teacher:
    # The harness's reference-row encoder: the vectors the table is fitted to are the ones the
    # teacher's row in the quality table is scored with.
    from zeroth.evaluation.harness import sentence_transformers_encoder

    return Teacher(
        path, folder_hash(path), sentence_transformers_encoder(path, batch_size, progress)
    )


def cached_encode(
    teacher: Teacher, texts: Sequence[str], cache_dir: Path, kind: str = "corpus"
) -> tuple[np.ndarray, bool]:
    """(teacher vectors of `texts`, whether they came from the cache)."""
    path = cache_dir / "teacher" / f"{teacher.sha256[:16]}-{kind}-{texts_hash(texts)[:16]}.npy"
    if path.is_file():
        vectors = np.load(path)
        if vectors.shape[0] == len(texts):
            return vectors, True
    vectors = teacher.encode(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors, False
