"""Optional extras: a feature whose libraries are not installed fails with one line naming the
extra that brings them (``pip install "fxml[deep]"``), instead of an ImportError deep in a run."""

from __future__ import annotations

from importlib.util import find_spec

from fxml.errors import FxmlError

# extra -> the top-level modules it installs
EXTRAS: dict[str, tuple[str, ...]] = {
    "deep": ("torch", "lightning"),
}
HINTS = {"deep": "install torch's CPU or accelerator build first, then "}


def missing_modules(extra: str) -> list[str]:
    return [module for module in EXTRAS[extra] if find_spec(module) is None]


def installed(extra: str) -> bool:
    return not missing_modules(extra)


def require_extra(extra: str, feature: str) -> None:
    """Raise one line naming ``extra`` when any of its libraries is missing."""
    missing = missing_modules(extra)
    if missing:
        raise FxmlError(
            f"{feature} need {' and '.join(missing)}, which are not installed: "
            f'{HINTS.get(extra, "")}pip install "fxml[{extra}]"')
