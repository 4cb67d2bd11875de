"""Typed errors. Each carries a message that tells the user what to fix (file, key, field)."""


class MiniMaxError(Exception):
    """Base class of every error minimax01 raises on purpose."""


class ConfigError(MiniMaxError, ValueError):
    """A config.json / MiniMaxConfig field is missing or invalid; the message names the key."""


class CheckpointError(MiniMaxError, ValueError):
    """A checkpoint directory or file is unusable; the message names the file and/or tensor."""


class RequestError(MiniMaxError, ValueError):
    """A generation / API request is invalid; the message names the field."""
