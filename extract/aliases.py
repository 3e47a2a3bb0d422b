"""Point OpenAI model names at a checkpoint in models_list.yaml, keeping the file's other content.

ruamel.yaml's round-trip mode keeps comments, key order and other entries (with their extra keys
such as backend or device) as they were; only `path` of the named entries is set (plus, for an
imported model whose library truncates, its `max_tokens` and `on_overflow`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from extract.errors import ExtractError

HEADER = "# OpenAI model name -> checkpoint; paths are relative to this file.\n"


def _yaml() -> YAML:
    yaml = YAML()  # round-trip
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.preserve_quotes = True
    return yaml


def _load(models_list: Path, yaml: YAML) -> tuple[CommentedMap, str]:
    """The file's mapping (empty if absent) and the text to put before it when creating it."""
    if models_list.exists():
        try:
            data = yaml.load(models_list.read_text())
        except Exception as exc:
            first = (str(exc).strip().splitlines() or ["?"])[0]
            raise ExtractError(f"{models_list}: not valid YAML: {first}") from exc
        text_prefix = ""
    else:
        data, text_prefix = None, HEADER
    if data is None:
        data = CommentedMap()
    if not isinstance(data, dict):
        raise ExtractError(f"{models_list}: expected a mapping with a `models:` key")
    models = data.get("models")
    if models is None:
        models = data["models"] = CommentedMap()
    if not isinstance(models, dict):
        raise ExtractError(f"{models_list}: `models:` must be a mapping")
    return data, text_prefix


def check_models_list(models_list: Path) -> None:
    """Fail before extracting, not after, when --models-list cannot be edited."""
    _load(models_list, _yaml())


def add_aliases(
    models_list: Path,
    checkpoint: Path,
    names: list[str],
    settings: Mapping[str, object] | None = None,
) -> None:
    """Add or update `models.<name>.path` for each name, pointing at `checkpoint`, and set the
    entry keys in `settings` (an imported model's token limit)."""
    yaml = _yaml()
    data, text_prefix = _load(models_list, yaml)
    models = data["models"]
    rel = os.path.relpath(checkpoint.resolve(), models_list.resolve().parent)
    for name in names:
        entry = models.get(name)
        if isinstance(entry, dict):
            entry["path"] = rel
        else:
            entry = models[name] = CommentedMap(path=rel)
        entry.update(settings or {})
    models_list.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=models_list.parent, prefix=f".{models_list.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text_prefix)
            yaml.dump(data, f)
        if models_list.exists():
            os.chmod(tmp, models_list.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, models_list)
    except BaseException:
        os.unlink(tmp)
        raise
