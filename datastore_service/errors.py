"""Errors a user can act on: the CLI prints them as one line and exits non-zero."""


class CrestError(Exception):
    """A failure with a message meant for the user, not a traceback."""


class CorpusError(CrestError):
    """The corpus is missing, empty or unreadable."""


class StoreError(CrestError):
    """A datastore file is missing, corrupt, of another schema or of another tokenizer."""


class BudgetError(CrestError):
    """The byte or row budget cannot hold even one draft tree."""
