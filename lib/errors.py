"""The one exception type for errors a user can cause; the CLI prints its message on one line."""


class GapscopeError(Exception):
    """An error the user can fix: the message says what to do."""
