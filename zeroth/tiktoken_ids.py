"""tiktoken encodings, loaded offline, for aliases whose token-id inputs are OpenAI's ids.

LangChain's OpenAIEmbeddings tokenises with tiktoken (cl100k_base for OpenAI model names) and
sends the ids; the server decodes them back to text and re-tokenises with the model's tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path

import tiktoken

CACHE_ENV = "TIKTOKEN_CACHE_DIR"
# Written by `python -m extract.fetch tiktoken`; tiktoken looks files up by a hash of their URL.
REPO_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tiktoken"
# tiktoken downloads a missing file; these are the names whose files we know to look for.
KNOWN_FILES = {
    "cl100k_base": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    "o200k_base": "fb374d419588a4632f3f557e76b4b70aebbca790",
}


class EncodingUnavailable(RuntimeError):
    pass


def use_cache_dir(path: str | os.PathLike) -> None:
    """Where tiktoken finds its files: tiktoken reads only its own environment variable."""
    os.environ[CACHE_ENV] = str(path)


def load_encoding(name: str) -> tiktoken.Encoding:
    """tiktoken.get_encoding without the network: the files must be in TIKTOKEN_CACHE_DIR
    (settings.tiktoken_cache_dir), else in the repository's .cache/tiktoken."""
    if name not in tiktoken.registry.ENCODINGS:
        if CACHE_ENV not in os.environ and REPO_CACHE.is_dir():
            use_cache_dir(REPO_CACHE)
        cache = Path(os.environ.get(CACHE_ENV, "/nonexistent"))
        sha = KNOWN_FILES.get(name)
        if sha is not None and not (cache / sha).is_file():
            raise EncodingUnavailable(
                f"tiktoken encoding {name!r} is not cached in {cache}; run "
                "`python -m extract.fetch tiktoken` and set TIKTOKEN_CACHE_DIR=.cache/tiktoken"
            )
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # unknown name, or a download that cannot happen offline
        raise EncodingUnavailable(f"tiktoken encoding {name!r}: {exc}".splitlines()[0]) from exc


def decode_to_texts(encoding: tiktoken.Encoding, rows: list[list[int]]) -> list[str] | None:
    """Each id list back to text; None when some id is not a token of the encoding."""
    try:
        raw = [encoding.decode_bytes(row) for row in rows]
    except (KeyError, ValueError, OverflowError):
        return None
    # A chunk cut mid-character (LangChain splits long texts by token count) keeps what it can.
    return [b.decode("utf-8", errors="replace") for b in raw]
