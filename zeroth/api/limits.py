"""Per-request limits that span inputs (body bytes: werkzeug; inputs: the schema; tokens per
input: each model's max_tokens). Every message names the limit and its setting."""

from __future__ import annotations

from zeroth.api.errors import bad_request
from zeroth.models_list import Limits


def check_total_tokens(count: int, limits: Limits) -> None:
    if count > limits.max_total_tokens:
        raise bad_request(
            f"'input' has {count} tokens in all, more than the maximum of "
            f"{limits.max_total_tokens} tokens per request (limits.max_total_tokens); "
            "send fewer inputs per request",
            param="input",
            code="max_tokens_per_request",
        )
