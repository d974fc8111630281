"""A real PostgreSQL server for the tests: a private cluster on 127.0.0.1, started and stopped here.

The distribution's packages provide the binaries (``apt-get install -y postgresql``; .ci/run does
it). PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

USER, PASSWORD = "fxml", "pg-Secret-Sentinel-7731"


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One cluster in ``root``; ``url(db)`` gives a SQLAlchemy URL with the password inside."""

    def __init__(self, root: Path, binaries: Path) -> None:
        self.root, self.bin = root, binaries
        self.data, self.sockets = root / "data", root / "sockets"
        self.port = _free_port()
        self.as_postgres = os.geteuid() == 0

    def _command(self, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *args] if self.as_postgres else list(args)

    def _run(self, *args: str) -> None:
        subprocess.run(self._command(*args), check=True, capture_output=True, text=True, timeout=120)

    def init(self) -> None:
        self.sockets.mkdir(parents=True)
        if self.as_postgres:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        password_file = self.root / "pw"
        password_file.write_text(PASSWORD)
        if self.as_postgres:
            shutil.chown(password_file, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "-A", "scram-sha-256",
                  f"--pwfile={password_file}", "--no-sync")
        password_file.unlink()

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w",
                  "-l", str(self.root / "server.log"), "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart_after(self, seconds: float) -> None:
        """Stop now, start again ``seconds`` later (an outage seen by running clients)."""
        self.stop()
        time.sleep(seconds)
        self.start()

    def create_database(self, name: str) -> str:
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
                        name], check=True, capture_output=True, text=True, env=env, timeout=60)
        return self.url(name)

    def url(self, database: str, with_password: bool = True) -> str:
        secret = f":{PASSWORD}" if with_password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    binaries = _binaries()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (apt-get install -y postgresql)")
        pytest.skip("PostgreSQL is not installed here (apt-get install -y postgresql)")
    # not under pytest's tmp folder: that one is private to the user running the tests
    root = Path(tempfile.mkdtemp(prefix="fxml-postgres-"))
    os.chmod(root, 0o755)
    server = PostgresServer(root, binaries)
    server.init()
    server.start()
    yield server
    with contextlib.suppress(subprocess.CalledProcessError):
        server.stop()
    shutil.rmtree(root, ignore_errors=True)
