"""zeroth.tokenizer.truncate: the one place ids are cut to a model's max_tokens, for the
server's `on_overflow: truncate` and for the indexer."""

from __future__ import annotations

import base64

import numpy as np

from index.embed import EmbedBatch, EmbedOptions
from zeroth.tokenizer import truncate


def test_rows_over_the_limit_keep_their_first_ids() -> None:
    rows = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10, 11], []]
    cut, lengths = truncate(rows, 4)
    assert cut == [[1, 2, 3, 4], [7], [8, 9, 10, 11], []]
    # The lengths are those before the cut: the caller needs them for its errors and usage.
    assert lengths.dtype == np.int64 and lengths.tolist() == [6, 1, 4, 0]
    assert rows == [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10, 11], []]  # the input is not changed


def test_nothing_over_the_limit_is_left_as_it_is() -> None:
    rows = [[1, 2], [3, 4, 5, 6]]
    cut, lengths = truncate(rows, 4)
    assert cut is rows and lengths.tolist() == [2, 4]
    cut, lengths = truncate([], 4)
    assert cut == [] and lengths.shape == (0,)


def test_arrays_are_cut_as_arrays() -> None:
    """The indexer tokenises to uint32 arrays (the twin's bulk form)."""
    rows = [np.arange(10, dtype=np.uint32), np.arange(3, dtype=np.uint32)]
    cut, lengths = truncate(rows, 5)
    assert lengths.tolist() == [10, 3]
    assert all(isinstance(r, np.ndarray) and r.dtype == np.uint32 for r in cut)
    assert [r.tolist() for r in cut] == [[0, 1, 2, 3, 4], [0, 1, 2]]


def test_server_and_indexer_cut_alike(client, tiny_ckpt) -> None:
    """tiny-truncate (max_tokens 4, on_overflow truncate) and the indexer at max_tokens 4 cut
    the same ids: the same vectors, and the same count of tokens embedded."""
    texts = ["the cat sat on the mat", "a", "hello world the quick brown dog ran over the log"]
    body = {"model": "tiny-truncate", "input": texts, "encoding_format": "base64"}
    resp = client.post("/v1/embeddings", json=body)
    assert resp.status_code == 200, resp.get_json()
    served = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in resp.json["data"]]
    )
    batch = EmbedBatch(EmbedOptions(checkpoint=str(tiny_ckpt), max_tokens=4))
    keep, vectors, tokens = batch.embed(texts)
    lengths = [len(row) for row in batch.tokenize(texts)]
    assert max(lengths) > 4 and min(lengths) < 4  # some cut, some not
    assert keep is None
    assert tokens == resp.json["usage"]["total_tokens"] == sum(min(n, 4) for n in lengths)
    np.testing.assert_array_equal(vectors, served)
