"""Errors that reach the user as one line (see ``sumtune.cli.run_main``)."""


class SumtuneError(Exception):
    """A problem the user can fix: printed as one line, the process exits non-zero."""

    exit_code = 2


class ConfigError(SumtuneError):
    """A bad run config: unknown key, wrong type or impossible value."""


class DataError(SumtuneError):
    """A bad data file: missing, unreadable, malformed, missing column, bad row."""
