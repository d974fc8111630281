"""Passwords that reach fxml inside URLs are masked wherever fxml or Hydra writes text.

Credentials belong in the environment, where each tool looks for them (MLflow:
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``; PostgreSQL: ``PGPASSWORD`` or
``~/.pgpass``; or ``${oc.env:NAME}`` inside a URL). A password written into a URL anyway
(``user:pass@host`` or ``?password=...``) is replaced by ``***`` in log records, console lines,
MLflow params, tags and artifacts, the files Hydra writes (``.hydra/*.yaml``, ``multirun.yaml``),
and, whoever prints it, in everything a command writes to stdout and stderr.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any, TextIO

MASK = "***"
# scheme://user:password@host: up to the last '@' before the host, since users write an unescaped
# '@' in passwords (erring towards masking too much, never too little)
_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s]*):(\S+)@(?=[^@/\s]*(?:[/?#\s'\"]|$))")
# ?password=... or &password=... in a query string (libpq and SQLAlchemy take both spellings)
_QUERY_PASSWORD = re.compile(r"([?&;](?:ssl)?password=)([^&\s'\";]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every URL password replaced by ``***``; a reference to where the password
    is (``${oc.env:PGPASSWORD}``) is no secret and stays, so a saved command still runs."""
    text = _USERINFO_PASSWORD.sub(lambda found: found[0] if _is_reference(found[2])
                                  else f"{found[1]}:{MASK}@", text)
    return _QUERY_PASSWORD.sub(lambda found: found[0] if _is_reference(found[2])
                               else f"{found[1]}{MASK}", text)


def _is_reference(password: str) -> bool:
    return password.startswith("${") and password.endswith("}") and "}" not in password[:-1]


def redact_records() -> None:
    """Mask passwords in every log record of this process, whichever handler writes it (Hydra's
    launch lines, dependencies' messages): the record factory is process-wide. Idempotent."""
    current = logging.getLogRecordFactory()
    if getattr(current, "fxml_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return record

    factory.fxml_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def redact_file(path: Path) -> None:
    if path.is_file():
        text = path.read_text()
        masked = redact(text)
        if masked != text:
            path.write_text(masked)


class RedactedStream:
    """A text stream that masks URL passwords in whatever is written through it: the last line of
    defence for what fxml does not print itself (Hydra's "Error executing job with overrides"
    line, MLflow's "View run ... at" line). Everything else is the wrapped stream's."""

    fxml_redacts = True

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(redact(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def redact_output_streams() -> None:
    """Mask passwords in everything this process prints on stdout and stderr from now on.
    Idempotent."""
    if not getattr(sys.stdout, "fxml_redacts", False):
        sys.stdout = RedactedStream(sys.stdout)
    if not getattr(sys.stderr, "fxml_redacts", False):
        sys.stderr = RedactedStream(sys.stderr)
