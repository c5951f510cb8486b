"""Exception type for bad input and unusable files; the CLI prints these without a traceback."""


class MoireSTMError(ValueError):
    """A user-facing error whose message names the problem."""
