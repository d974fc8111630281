"""Errors that reach users as one line, without a traceback."""

from __future__ import annotations

from collections.abc import Iterator


class FxmlError(Exception):
    """A problem with the user's input (config, data, credentials): reported as one line."""


def require(condition: bool, key: str, rule: str, value: object) -> None:
    """Raise the one-line error ``<key> <rule> (got <value>)`` unless ``condition`` holds."""
    if not condition:
        raise FxmlError(f"{key} {rule} (got {value!r})")


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    require(value in allowed, key, f"must be one of {', '.join(allowed)}", value)


def child_failure(stderr: str, returncode: int) -> str:
    """Why a child process failed, in one line: the last line it printed to stderr, else the signal
    that killed it (SIGKILL is most often the kernel's out-of-memory killer), else its exit code."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines:
        return lines[-1].strip()
    if returncode < 0:
        return f"killed by signal {-returncode}" + (" (out of memory?)" if returncode == -9 else "")
    return f"exit code {returncode}"


class RunPruned(Exception):
    """A run stopped early on purpose (a sweep pruned its trial): the tracked run ends KILLED with
    a ``pruned`` tag. The sweep layer raises a subclass that Optuna recognises too, so tracking
    needs no Optuna."""


def describe_config_error(error: BaseException) -> str:
    """One line for an OmegaConf/Hydra composition error: the message and the key it is about."""
    from omegaconf.errors import OmegaConfBaseException  # here: errors stays a dependency-free leaf

    cause = error
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    for candidate in (cause, cause.__cause__):
        if isinstance(candidate, FxmlError):
            return str(candidate)
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    message = lines[0] if lines else type(cause).__name__
    key = getattr(cause, "full_key", None)
    if key and key not in message:
        message = f"{message} (key: {key})"
    if "Available options" in str(cause):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available options"))
        options = [line for line in lines[start + 1 :] if " " not in line and ":" not in line]
        message = f"{message}; available: {', '.join(options)}"
    return message


OUTPUT_CLOSED = "the output was closed (broken pipe)"


def output_closed(error: BaseException) -> bool:
    """Whether ``error`` is a write to a closed stdout (``fxml.run | head``): Python's own
    ``BrokenPipeError``, or the ``SystemExit(1)`` that rich raises in its place. A tracking
    server that drops a connection surfaces as its client library's error instead."""
    return isinstance(error, (SystemExit, BrokenPipeError)) \
        and any(isinstance(link, BrokenPipeError) for link in error_chain(error))


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what caused it or was being handled when it was raised, and so on (each
    exception once: a chain can loop)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
