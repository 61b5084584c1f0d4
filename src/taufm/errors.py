"""The one exception type a user sees: bad input or configuration, stated plainly."""

from __future__ import annotations


class TaufmError(Exception):
    """A problem with the user's input, files or configuration (not a bug in taufm).

    The message names the file, key or value at fault; the CLI prints it without a traceback.
    """
