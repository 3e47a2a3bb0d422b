"""python -m extract: a causal LLM (or a trained static model) in, a zeroth checkpoint out."""
