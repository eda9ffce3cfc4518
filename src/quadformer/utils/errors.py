"""User-facing errors: the CLI prints these as one line, without a traceback."""


class QuadformerError(Exception):
    """Bad input or configuration; the message names the value and the fix."""
