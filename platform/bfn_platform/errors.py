"""The one error type the command line shows as a single line (no traceback unless --debug)."""


class BfnError(Exception):
    """A user-facing failure: the message names the problem and what to do about it."""
