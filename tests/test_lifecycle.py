"""A run ends cleanly whatever stops it: signals to a real process, a real MLflow server killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Workspace, assert_one_line_error
from tests.helpers import ENDLESS, finish, start, wait_for_training


@pytest.mark.parametrize(("family", "signum", "code"), [
    ("lgbm", signal.SIGTERM, 143),
    ("mlp", signal.SIGINT, 130),
    ("lgbm", signal.SIGHUP, 129),  # the terminal closed (an SSH session ended)
])
def test_a_signal_ends_the_run_killed(workspace: Workspace, family, signum, code) -> None:
    name = f"signal-{family}-{signum.name}"
    process = start(workspace, *ENDLESS[family], f"tracking.run_name={name}")
    run_id = wait_for_training(workspace.uri, "fxml", name, process)
    process.send_signal(signum)
    result = finish(process)
    assert result.returncode == code, result.stderr
    assert_one_line_error(result, f"interrupted by {signum.name}", "KILLED", code=code)
    run = workspace.client().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"].startswith("Interrupted"), run.data.tags["error"]
    assert any(key.startswith(("valid_", "train_")) for key in run.data.metrics), "what was logged stays"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def start_mlflow_server(root: Path) -> tuple[subprocess.Popen, str]:
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root}/server.db",
               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed with the process
    # its own process group: the server runs its workers as child processes, all killed together
    server = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.monotonic() + 240  # slow on a loaded machine: it creates its tables first
    while time.monotonic() < deadline:
        assert server.poll() is None, (root / "server.log").read_text()
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"http://127.0.0.1:{port}"
        time.sleep(0.3)
    kill_group(server)
    raise AssertionError("mlflow server did not start: " + (root / "server.log").read_text())


@pytest.mark.slow
def test_a_tracking_server_killed_mid_run_gives_up_in_seconds(workspace: Workspace, tmp_path) -> None:
    server, uri = start_mlflow_server(tmp_path / "server")
    try:
        process = start(workspace, *ENDLESS["lgbm"], f"tracking.uri={uri}", "tracking.run_name=outage",
                        "tracking.retry_seconds=4")
        wait_for_training(uri, "fxml", "outage", process)
    finally:
        kill_group(server)
    stopped = time.monotonic()
    result = finish(process, timeout=120)
    elapsed = time.monotonic() - stopped
    assert_one_line_error(result, f"MLflow tracking at {uri} stopped answering")
    assert result.returncode == 2
    # MLflow alone retries each request for about 4 minutes; a loaded machine adds a little
    assert elapsed < 100, f"gave up only after {elapsed:.0f} s"


def test_closed_output_ends_the_run_failed_not_blamed_on_mlflow(workspace: Workspace) -> None:
    """``python -m fxml.run | head``: the pipe closes mid-run; the run is closed FAILED (not
    left RUNNING as if the tracking server had gone), with one line on stderr."""
    name = "closed-output"
    process = start(workspace, "model=ridge", f"tracking.run_name={name}", COLUMNS="200")
    while "memory:" not in (line := process.stdout.readline()):
        assert line, process.stderr.read()
    process.stdout.close()  # as head does once it has its lines
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 2, stderr
    assert "Traceback" not in stderr and "stopped answering" not in stderr, stderr
    assert "fxml: error: the output was closed (broken pipe)" in " ".join(stderr.split())
    run = next(r for r in workspace.runs() if r.info.run_name == name)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "the output was closed (broken pipe)"


def test_a_signal_ignored_at_start_stays_ignored() -> None:
    """``nohup python -m fxml.run ...`` outlives the terminal: SIGHUP stays ignored."""
    from fxml.interrupts import STOP_SIGNALS, stop_on_signals

    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        stop_on_signals()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]  # installed
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
