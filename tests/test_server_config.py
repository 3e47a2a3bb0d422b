"""models_list.yaml parsing and model loading: every mistake is one line naming the entry."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_DIM, make_app, write_models_list

import server
from zeroth.models_list import DEFAULT_MAX_TOKENS, ConfigError, load_models_list, token_ids_for
from zeroth.registry import ModelRegistry
from zeroth.settings import Settings


def _load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        ModelRegistry.load(load_models_list(path))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_and_relative_paths(tmp_path: Path, tiny_ckpt: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    rel = Path("..") / ".." / tiny_ckpt.parent.name / tiny_ckpt.name
    path = write_models_list(sub / "m.yaml", {"models": {"a": {"path": str(rel)}}})
    # Resolved against the file's folder, not the working directory.
    path2 = write_models_list(
        tmp_path / "m.yaml", {"models": {"a": {"path": str(tiny_ckpt.resolve())}}}
    )
    entry = load_models_list(path2).models["a"]
    assert entry.path == tiny_ckpt.resolve()
    assert (entry.backend, entry.device, entry.pooling) == ("torch", "cpu", "mean")
    assert entry.normalize is True and entry.on_overflow == "error"
    assert entry.max_tokens == DEFAULT_MAX_TOKENS and entry.token_ids == "auto"
    parsed = load_models_list(path)
    assert parsed.models["a"].path == (sub / rel).resolve()
    assert parsed.default is None
    assert parsed.source == path.resolve()


def test_normalise_spelling_is_accepted(tmp_path: Path, tiny_ckpt: Path) -> None:
    path = write_models_list(
        tmp_path / "m.yaml", {"models": {"a": {"path": str(tiny_ckpt), "normalise": False}}}
    )
    assert load_models_list(path).models["a"].normalize is False


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"models": {"small": {"path": "x", "bakend": "torch"}}}, "models.small.bakend: unknown"),
        ({"models": {"a": {"path": "x"}}, "defualt": "a"}, "defualt: unknown key"),
        ({"models": {"a": {"path": "x", "backend": "onnx"}}}, "models.a.backend"),
        ({"models": {"a": {"path": "x", "device": "tpu"}}}, "models.a.device"),
        ({"models": {"a": {"path": "x", "max_tokens": 0}}}, "models.a.max_tokens"),
        ({"models": {"a": {"path": "x", "on_overflow": "drop"}}}, "models.a.on_overflow"),
        ({"models": {"a": {"path": "x", "token_ids": "cl100k"}}}, "models.a.token_ids"),
        ({"models": {"a": {}}}, "models.a.path: Field required"),
        ({"models": {"a": {"path": "x"}}, "default": "b"}, "default 'b' is not one of"),
        ({"models": {}}, "models"),
        ({"model": {"a": {"path": "x"}}}, "model: unknown key"),
        (["a"], "expected a mapping"),
    ],
)
def test_bad_lists_fail_in_one_line(tmp_path: Path, data: object, expected: str) -> None:
    path = write_models_list(tmp_path / "m.yaml", data)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        load_models_list(path)
    message = str(info.value)
    assert "\n" not in message
    assert expected in message
    assert str(path) in message


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  a: {path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:.*invalid YAML"):
        load_models_list(bad)
    with pytest.raises(ConfigError, match="cannot read models list"):
        load_models_list(tmp_path / "absent.yaml")


def test_aliases_of_one_checkpoint_share_one_model(models_list: Path) -> None:
    registry = ModelRegistry.load(load_models_list(models_list))
    tiny = registry.get("tiny").embedder
    # Same path (spelled differently) and load options: one embedder.
    for alias in ("tiny-alias", "org/tiny-slash", "tiny-truncate", "tiny-dims", "tiny-raw"):
        assert registry.get(alias).embedder is tiny
    # Different pooling or checkpoint: a separate one.
    assert registry.get("tiny-max").embedder is not tiny
    assert registry.get("tiny8").embedder is not tiny
    assert len(registry.embedders()) == 3
    assert registry.get(None).alias == "tiny"
    assert registry.get("tiny-dims").dimensions == 5
    assert registry.get("tiny").dimensions == TINY_DIM


def test_unreadable_checkpoints_name_the_entry(tmp_path: Path, tiny_ckpt: Path) -> None:
    missing = write_models_list(tmp_path / "a.yaml", {"models": {"broken": {"path": "nowhere"}}})
    assert "models.broken: " in _load_error(missing)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in tiny_ckpt.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    path = write_models_list(tmp_path / "b.yaml", {"models": {"bad-weights": {"path": "corrupt"}}})
    assert "models.bad-weights: cannot load" in _load_error(path)


def test_start_up_option_errors(tmp_path: Path, tiny_ckpt: Path, monkeypatch) -> None:
    too_wide = write_models_list(
        tmp_path / "a.yaml", {"models": {"wide": {"path": str(tiny_ckpt), "dimensions": 999}}}
    )
    assert "models.wide.dimensions" in _load_error(too_wide)
    no_ir = write_models_list(
        tmp_path / "b.yaml", {"models": {"ov": {"path": str(tiny_ckpt), "backend": "openvino"}}}
    )
    assert "models.ov: cannot load" in _load_error(no_ir)
    # A tiktoken encoding whose file is not cached (in the settings' folder) fails without
    # reaching for the network.
    tk = write_models_list(
        tmp_path / "c.yaml",
        {"models": {"tk": {"path": str(tiny_ckpt), "token_ids": "tiktoken:o200k_base"}}},
    )
    empty = tmp_path / "empty-cache"
    # tiktoken reads only its own variable, which create_app sets: restored after the test.
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    with pytest.raises(ConfigError) as info:
        make_app(tk, tiktoken_cache_dir=empty)
    assert f"models.tk.token_ids: tiktoken encoding 'o200k_base' is not cached in {empty}" in str(
        info.value
    )


def test_module_app_exits_with_one_line(tmp_path: Path, monkeypatch) -> None:
    bad = write_models_list(tmp_path / "m.yaml", {"models": {"x": {"path": "x", "pool": "max"}}})
    monkeypatch.setenv("MODELS_LIST", str(bad))
    with pytest.raises(SystemExit) as info:
        server.__getattr__("app")
    assert str(info.value).startswith(f"zeroth: {bad}: models.x.pool: unknown key")
    assert "app" not in vars(server)


def test_models_list_precedence(monkeypatch) -> None:
    """--models-list (python server.py), else $MODELS_LIST, else ./models_list.yaml. server.py
    is the shell that reads the environment, so this test sets the variable."""
    chosen: list[Path] = []

    def capture(settings: Settings):
        chosen.append(settings.models_list)
        raise ConfigError("stop before serving")

    monkeypatch.setattr(server.api, "create_app", capture)
    monkeypatch.delenv("MODELS_LIST", raising=False)
    assert Settings.from_env().models_list == Path("models_list.yaml")
    monkeypatch.setenv("MODELS_LIST", "/etc/zeroth.yaml")
    for argv in ([], ["--models-list", "cli.yaml"]):
        with pytest.raises(SystemExit) as info:
            server.main(argv)
        assert info.value.code == 1
    assert chosen == [Path("/etc/zeroth.yaml"), Path("cli.yaml")]


def test_checked_in_models_list_is_valid() -> None:
    parsed = load_models_list(Path(__file__).parents[1] / "models_list.yaml")
    assert parsed.default == "text-embedding-3-small"
    assert {"text-embedding-3-small", "text-embedding-ada-002"} <= parsed.models.keys()
    # LangChain sends cl100k_base ids for these names, however the list spells that.
    for alias in ("text-embedding-3-small", "text-embedding-ada-002"):
        assert token_ids_for(alias, parsed.models[alias]) == "tiktoken:cl100k_base"


def test_source_is_not_a_file_key(tmp_path: Path) -> None:
    path = write_models_list(tmp_path / "m.yaml", {"models": {"a": {"path": "x"}}, "source": "y"})
    with pytest.raises(ConfigError, match="source: unknown key"):
        load_models_list(path)
