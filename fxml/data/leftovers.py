"""Temporary files a killed process leaves behind, removed by the next run that writes beside them.

fxml writes every data file under a temporary name that carries the writer's process id, then
renames it: ``<store>.int8.<pid>.partial`` (the int8 store) and ``.<file>.<pid>.tmp`` (the
synthetic release). A process killed mid-write (SIGKILL, an OOM kill) never renames nor removes
its file, which may hold GiB; one whose process is gone is removed, another live run's never is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)
TEMPORARY_NAME = re.compile(r"\.(\d+)\.(?:partial|tmp)$")


def remove_dead_leftovers(folder: Path) -> None:
    """Remove the temporary files in ``folder`` whose writing process is no longer alive."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        found = TEMPORARY_NAME.search(path.name)
        if found is None or not path.is_file() or process_alive(int(found.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):  # another run removed it first
            size = path.stat().st_size
            path.unlink()
            log.info("data: removed %s (%.1f MiB), left by process %s, which is gone", path,
                     size / 2**20, found.group(1))


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
