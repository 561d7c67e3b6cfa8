"""The one error type users see: a one-line message saying what is wrong and what to do."""


class ReportgenError(Exception):
    """Bad input or an impossible request; the CLI prints it as one line and exits 2."""
