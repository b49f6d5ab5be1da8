"""Exceptions the package raises for bad input, so callers can catch them by kind.

Every message names the value or file at fault and says what to do about it.
"""


class LiquidControlError(Exception):
    """Base class of the errors that carry a message meant for the user."""


class ConfigError(LiquidControlError, ValueError):
    """A configuration value or parameter is invalid."""


class CheckpointError(LiquidControlError):
    """A checkpoint file is missing, truncated, corrupted, of another version or mismatched."""


class DataError(LiquidControlError):
    """A recording (episode, bag, tub) or an image is missing, unreadable or inconsistent."""
