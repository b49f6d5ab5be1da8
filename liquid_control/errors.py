"""Exceptions the package raises for bad input, so callers can catch them by kind.

Every message names the value or file at fault and the fix.
"""


class LiquidControlError(Exception):
    """Base class of the errors that carry a message meant for the user."""


class ConfigError(LiquidControlError, ValueError):
    """A configuration value or parameter is invalid."""


class CheckpointError(LiquidControlError):
    """A checkpoint file is missing, truncated, corrupted, of another version or mismatched."""


class DataError(LiquidControlError):
    """A recording (episode, bag, tub) or an image is missing, unreadable or inconsistent."""


def reject_unknown_keys(values: dict, settings_class: type, settings_name: str) -> None:
    """Raise ConfigError when ``values`` has keys that are not fields of a dataclass.

    ``settings_name`` names the settings in the message, e.g. 'preprocessing'.
    """
    from dataclasses import fields

    known = {field.name for field in fields(settings_class)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f'unknown {settings_name} settings {sorted(unknown)}; '
                          f'known: {sorted(known)}')
