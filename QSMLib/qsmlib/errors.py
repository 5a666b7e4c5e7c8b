"""Exceptions shared by the whole library."""


class QSMInputError(ValueError):
    """Input that cannot be processed.

    The message names the offending file or argument, the problem, and the fix,
    so that the command line can print it as a single line.
    """


class Cancelled(RuntimeError):
    """Raised from a progress callback to stop a running computation."""
