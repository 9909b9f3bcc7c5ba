"""The command line's user-facing errors: bfn_core's BfnError, the project's one root of them.

The CLI (cli.main) is the one boundary that turns a BfnError into one line `error: ...`.
"""
from bfn_core.errors import BfnError

__all__ = ["BfnError"]
