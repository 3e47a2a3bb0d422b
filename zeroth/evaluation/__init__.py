"""Quality evaluation: a small MTEB of our own over ../shared/eval (tasks), the harness that
scores checkpoints or any OpenAI-compatible server (harness; `python -m zeroth.evaluation`), the
README's quality table (quality_table) and the parity check against the full HF model (parity)."""
