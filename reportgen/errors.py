"""The one error type users see: a one-line message saying what is wrong and what to do."""


class ReportgenError(Exception):
    """Bad input or an impossible request; the CLI prints it as one line and exits 2."""

    exit_code = 2


class Interrupted(ReportgenError):
    """Ctrl-C, with what was saved and how to go on; the CLI exits 130 (as for SIGINT)."""

    exit_code = 130
