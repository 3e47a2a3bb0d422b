"""Step 3, pool: token ids become one float32 vector per input, at the requested size."""

from __future__ import annotations

import numpy as np

from zeroth.api.errors import bad_request
from zeroth.registry import ServedModel


def output_dimensions(requested: int | None, model: ServedModel) -> int:
    """Checked before any work is done, so a bad request costs nothing."""
    if requested is None:
        return model.dimensions
    if requested > model.native_dim:
        raise bad_request(
            f"'dimensions' must be between 1 and {model.native_dim} for this model, "
            f"got {requested}",
            param="dimensions",
        )
    return requested


def pool(ids: list[list[int]], model: ServedModel, dims: int) -> np.ndarray:
    """[n, dims] little-endian float32, C-contiguous; unit length unless normalize is off."""
    vectors = model.embedder.embed_ids(ids, normalize=model.entry.normalize, dims=dims)
    return np.ascontiguousarray(vectors, dtype="<f4")
