"""Run mergekit's passthrough slice from a template in configs/ (one per slice, not per family).

mergekit 0.1.5 shortens `num_hidden_layers` of the output config but not `layer_types`
(Gemma 2/3, Qwen2), so writing config.json fails after the weights are written; the
patch below slices `layer_types` to match. `python -m extract.mergekit_run CONFIG OUT` is
`mergekit-yaml CONFIG OUT --no-write-model-card` with that fix, for use by hand.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from extract.errors import ExtractError

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


# `--norm` -> the template of the slice that holds that norm (and, for layer0, layer 0).
SLICE_TEMPLATES = {"final": "final-norm", "layer0": "layer0"}


def template_path(template: str) -> Path:
    path = CONFIGS_DIR / f"{template}.yaml"
    if not path.is_file():
        raise ExtractError(f"no mergekit template {path}")
    return path


FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def source_dtype(config: dict) -> str:
    """The checkpoint's own float dtype: mergekit then copies tensors without conversion."""
    dtype = config.get("dtype") or config.get("torch_dtype")
    return dtype if dtype in FLOAT_DTYPES else "float32"


def render_config(template: str, source_dir: Path, dtype: str = "float32") -> dict:
    """The template with its source set to `source_dir` (the slice is the template's own)."""
    config = yaml.safe_load(template_path(template).read_text())
    try:
        (source,) = config["slices"][0]["sources"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise ExtractError(
            f"{template_path(template)}: expected one slice with one source"
        ) from None
    # The structured form: as a plain string, mergekit reads "+" as a LoRA and "@" as a revision.
    source["model"] = {"model": {"path": str(source_dir)}}
    config["dtype"] = dtype
    return config


def _fix_layer_types(config):
    layer_types = getattr(config, "layer_types", None)
    n_layers = getattr(config, "num_hidden_layers", None)
    if layer_types is not None and n_layers is not None and len(layer_types) != n_layers:
        config.layer_types = list(layer_types)[:n_layers]
    return config


@contextlib.contextmanager
def layer_types_fix() -> Iterator[None]:
    import mergekit.merge as merge

    original = merge._model_out_config

    def patched(*args, **kwargs):
        return _fix_layer_types(original(*args, **kwargs))

    merge._model_out_config = patched
    try:
        yield
    finally:
        merge._model_out_config = original


def run_mergekit(config: dict, out_dir: Path, verbose: bool = False, quiet: bool = False) -> None:
    """Run the merge in-process into `out_dir`; mergekit reads only the tensors it writes."""
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    if not verbose:
        logging.getLogger("mergekit").setLevel(logging.ERROR)
    merge_config = MergeConfiguration.model_validate(config)
    options = MergeOptions(write_model_card=False, quiet=quiet, copy_tokenizer=True)
    try:
        with layer_types_fix():
            run_merge(merge_config, str(out_dir), options=options)
    except ExtractError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExtractError(f"mergekit failed: {type(exc).__name__}: {first}") from exc
    finally:
        # The loader cache is a process-wide singleton holding open file handles per model.
        LoaderCache().loaders.clear()


def main() -> None:
    """`mergekit-yaml` with the layer_types fix (and no model card)."""
    from mergekit.scripts.run_yaml import main as run_yaml

    args = sys.argv[1:]
    if "--no-write-model-card" not in args:
        args.append("--no-write-model-card")
    with layer_types_fix():
        run_yaml.main(args=args, prog_name="python -m extract.mergekit_run")


if __name__ == "__main__":
    main()
