"""The one exception type for errors a user can cause; the CLI prints its message on one line."""


class GapscopeError(Exception):
    """An error the user can fix: the message says what to do."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's message for a one-line error: its first line (at most `limit`
    characters), or its type."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]
