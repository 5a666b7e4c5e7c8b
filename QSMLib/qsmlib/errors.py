"""Exceptions shared by the whole library."""


class QSMInputError(ValueError):
    """Input that cannot be processed.

    The message names the offending file or argument, the problem, and the fix,
    so that the command line can print it as a single line.
    """


class ImplausibleMaskError(QSMInputError):
    """A brain mask failed its plausibility check (see :mod:`qsmlib.mask_check`).

    ``check`` holds the check's record (volume, compactness, shares, problems),
    so that a caller can show it or offer to go on anyway.
    """

    def __init__(self, message, check=None):
        super().__init__(message)
        self.check = check


class ImplausibleMapError(QSMInputError):
    """The reconstructed map failed a physics check (see :func:`qsmlib.plausibility.assess`).

    ``checks`` holds the checks' records, so that a caller can show them.
    """

    def __init__(self, message, checks=None):
        super().__init__(message)
        self.checks = checks


class Cancelled(RuntimeError):
    """Raised from a progress callback to stop a running computation."""
