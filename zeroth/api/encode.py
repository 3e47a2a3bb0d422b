"""Step 4, encode: vectors become OpenAI's response body, without Python float lists.

orjson writes numpy rows directly; base64 is the little-endian float32 bytes of each row, which
the `openai` client requests by default and decodes with numpy (pybase64: SIMD, the stdlib's
bytes ~40x faster). Both give the bytes that `orjson.dumps` of the plain document would
(tests/test_fastpath.py checks it).
"""

from __future__ import annotations

import numpy as np
import orjson
from pybase64 import b64encode

_FIRST = b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":"'
_NEXT = b'"},{"object":"embedding","index":%d,"embedding":"'


def embeddings_body(vectors: np.ndarray, encoding_format: str, model: str, tokens: int) -> bytes:
    """`vectors`: [n, dims] little-endian float32, C-contiguous (what `pool` returns)."""
    if encoding_format == "base64":
        return _base64_body(vectors, model, tokens)
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)]
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def base64_rows(vectors: np.ndarray) -> list[bytes | memoryview]:
    """Each row's float32 bytes in base64 (ASCII)."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    n, dims = vectors.shape
    row_bytes = 4 * dims
    if row_bytes % 3:
        return [b64encode(row) for row in vectors]
    # Rows of a multiple of 3 bytes end on a base64 quantum, without padding: one encoding of
    # the whole matrix, cut every 4/3 row_bytes characters, is each row's own encoding.
    text = memoryview(b64encode(vectors))
    step = row_bytes // 3 * 4
    return [text[i : i + step] for i in range(0, n * step, step)]


def _base64_body(vectors: np.ndarray, model: str, tokens: int) -> bytes:
    # Base64 never needs JSON escaping, so the document is assembled as bytes (one copy), in
    # the very layout orjson writes.
    rows = base64_rows(vectors)
    parts = [_FIRST, rows[0]]
    for i in range(1, len(rows)):
        parts.append(_NEXT % i)
        parts.append(rows[i])
    parts.append(b'"}],"model":')
    parts.append(orjson.dumps(model))
    parts.append(b',"usage":{"prompt_tokens":%d,"total_tokens":%d}}' % (tokens, tokens))
    return b"".join(parts)
