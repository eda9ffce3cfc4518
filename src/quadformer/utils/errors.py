"""User-facing errors: the CLI prints these as one line, without a traceback.

Raise :class:`QuadformerError` where an input (a path, an option value, a config entry, a
file's content) is judged, with a message that names the bad value and the fix. Anything else
that escapes to the CLI is a bug and keeps its traceback.
"""


class QuadformerError(ValueError):
    """Bad input or configuration; the message names the value and the fix.

    A ``ValueError`` so that library callers that already catch ``ValueError`` for bad
    arguments keep working where a check now raises this type."""
