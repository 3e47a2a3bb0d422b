"""Step 4, encode: vectors become OpenAI's response body, without Python float lists.

orjson writes numpy rows directly; base64 is the little-endian float32 bytes of each row, which
the `openai` client requests by default and decodes with numpy.
"""

from __future__ import annotations

from base64 import b64encode

import numpy as np
import orjson


def embeddings_body(vectors: np.ndarray, encoding_format: str, model: str, tokens: int) -> bytes:
    if encoding_format == "base64":
        rows = [b64encode(row.tobytes()).decode("ascii") for row in vectors]
    else:
        rows = list(vectors)
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
