"""Bulk indexing: embed a corpus with Ray Data, without HTTP or JSON in the way.

    python -m index corpus.jsonl.gz --out vectors/ --checkpoint models/smollm2-135m \\
        --id-field _id --text-field title,text

Documents are read by Ray Data (text, JSONL, Parquet), embedded by an actor pool whose actors
each load the checkpoint once with the server's own `StaticEmbedder`, and written as Parquet
shards of (id, vector). Shards are committed by rename, so a rerun after an interruption skips
every id already written and finishes the rest.
"""
