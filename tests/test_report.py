"""``python -m fxml.report``: a self-contained HTML comparison, opened in a real headless browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import Workspace, assert_one_line_error

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BLUE = np.array([31, 119, 180])  # matplotlib's first line colour: the plots were drawn


def report(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fxml.report", *args], cwd=ws.root, env=ws.env(),
                          capture_output=True, text=True, timeout=600)


def screenshot(page: Path, image: Path) -> np.ndarray:
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        # CI (.ci/run) installs Debian's chromium; elsewhere the screenshots are skipped, not failed
        missing = "a headless Chromium is needed (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                             "--hide-scrollbars", f"--screenshot={image}", "--window-size=1280,1600",
                             page.as_uri()], capture_output=True, text=True, timeout=120)
    assert image.is_file(), result.stderr
    return np.asarray(Image.open(image).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def two_runs(workspace: Workspace) -> list[str]:
    ids = []
    for name, overrides in (("report-ridge", ("model=ridge",)),
                            ("report-lgbm", ("model.n_estimators=30",))):
        result = workspace.train(*overrides, f"tracking.run_name={name}", "tracking.log_model=false")
        assert result.returncode == 0, result.stderr
        ids.append(next(r.info.run_id for r in workspace.runs() if r.info.run_name == name))
    return ids


@pytest.mark.slow
def test_report_is_self_contained_and_renders_in_a_browser(workspace: Workspace, two_runs,
                                                            tmp_path: Path) -> None:
    output = tmp_path / "compare.html"
    result = report(workspace, f"runs={two_runs[0]},{two_runs[1]}", f"output={output}")
    assert result.returncode == 0, result.stderr
    assert f"wrote {output}" in result.stdout
    page = output.read_text()
    # nothing is fetched: no external script, style, image or link
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert page.count("src='data:image/png;base64,") == 2  # cumulative scores, prediction correlations
    for run_id in two_runs:
        assert run_id[:8] in page
    for column in ("corr_mean", "mmc_mean", "mpc_mean", "payout_apy", "exposure_dissimilarity_mean"):
        assert f"<th>{column}</th>" in page
    assert "table.sortable" in page and "addEventListener('click'" in page
    assert "not Numerai's TC" in page

    pixels = screenshot(output, tmp_path / "compare.png")
    assert pixels.shape[:2] == (1600, 1280)
    assert pixels.std() > 20  # not a blank page
    not_white = (pixels < 235).any(axis=2).mean()
    assert not_white > 0.03, not_white
    plotted = (np.abs(pixels - BLUE).sum(axis=2) < 40).sum()
    assert plotted > 500, plotted  # the inline PNG plots were decoded and drawn


def test_report_needs_exactly_one_selection(workspace: Workspace) -> None:
    """The lines the command prints (in-process: the page test above runs the command itself)."""
    def report_here(*args: str):  # type: ignore[no-untyped-def]
        return workspace.command("fxml.report", *args)

    assert_one_line_error(report_here(), "give exactly one of experiment=")
    assert_one_line_error(report_here("experiment=nope"), "experiment=nope does not exist")
    assert_one_line_error(report_here("runs=[deadbeef]"), "no MLflow run deadbeef")
