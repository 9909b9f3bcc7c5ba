"""The project's one root of user-facing errors."""
from __future__ import annotations


class BfnError(ValueError):
    """A failure the user can fix: the message names the problem and what to do.

    Every user-facing error of the project derives from it (the pipelines' and the command line's
    included), so a caller catches one class to tell a user's mistake from a bug. It subclasses
    ValueError because most such failures are bad values, and callers that catch ValueError keep working.
    """
