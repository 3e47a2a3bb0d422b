"""Errors the extraction CLI reports as a single line, without a traceback."""


class ExtractError(RuntimeError):
    """A failure caused by the input: bad source, unknown family, missing tensors ..."""

    exit_code = 1


class UsageError(ExtractError):
    """A mistake in the command line itself (output exists without --force, bad combination)."""

    exit_code = 2
