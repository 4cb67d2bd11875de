"""Typed errors. Each carries a message that tells the user what to fix (file, key, field)."""


class MiniMaxError(Exception):
    """Base class of every error minimax01 raises on purpose."""


class ConfigError(MiniMaxError, ValueError):
    """A config.json / MiniMaxConfig field is missing or invalid; the message names the key."""


class CheckpointError(MiniMaxError, ValueError):
    """A checkpoint directory or file is unusable; the message names the file and/or tensor."""


class RequestError(MiniMaxError, ValueError):
    """A generation / API request is invalid; the message names the field."""


def brief(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut to about `limit` characters: error messages name what was sent without echoing a
    999-element list or a 4000-digit number back to the client (or into the log)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > 4 * limit:
        return f"an integer of more than {limit} digits"  # repr() of a huge int is slow or refused outright
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
