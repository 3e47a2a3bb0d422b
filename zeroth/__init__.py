"""Zeroth: static (layer-0) text embeddings cut out of causal LLMs."""

__version__ = "0.1.0"
