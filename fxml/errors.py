"""Errors that reach users as one line, without a traceback."""


class FxmlError(Exception):
    """A problem with the user's input (config, data, credentials): reported as one line."""


def require(condition: bool, key: str, rule: str, value: object) -> None:
    """Raise the one-line error ``<key> <rule> (got <value>)`` unless ``condition`` holds."""
    if not condition:
        raise FxmlError(f"{key} {rule} (got {value!r})")


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    require(value in allowed, key, f"must be one of {', '.join(allowed)}", value)
