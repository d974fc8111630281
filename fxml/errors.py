"""Errors that reach users as one line, without a traceback."""


class FxmlError(Exception):
    """A problem with the user's input (config, data, credentials): reported as one line."""
