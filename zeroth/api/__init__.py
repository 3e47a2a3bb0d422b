"""The HTTP layer: one module per step of a request (validate, tokenize, pool, encode)."""
