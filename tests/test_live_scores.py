"""``python -m fxml.live_scores``: Numerai's resolved round scores onto the runs that produced them,
through the fake numerapi client (recorded-shape responses), twice, without duplicates."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from fxml.scoring.diagnostics import churn
from fxml.submission.live import metric_name, resolved_round_scores
from tests.conftest import Workspace, assert_one_line_error
from tests.fakes import FAKE_MODELS, recorded_round_scores
from tests.helpers import KEYS, PUBLIC_ID, SECRET_KEY, fxml_command, served_release

FAKE_API = "api._target_=tests.fakes.FakeNumerAPI"
REGISTERED = "fxml-live"
ROUND_1 = {"v2_corr20": 0.021, "mmc": 0.004, "tc": -0.013, "bmc": 0.002}
ROUND_2 = {"v2_corr20": -0.008, "mmc": 0.001, "tc": 0.027, "bmc": -0.001}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    ws = Workspace(tmp_path_factory.mktemp("live"))
    result = ws.train("model=ridge", "tracking.run_name=ridge")
    assert result.returncode == 0, result.stderr
    run_id = next(r.info.run_id for r in ws.runs() if r.info.run_name == "ridge")
    served = served_release(ws)

    def command(*args: str, keys: bool = True, round_number: int = 1000):
        # setting the scene: promote and submit are tested as typed in test_promote_submit
        return fxml_command(ws, *args, keys=keys, round_number=round_number, served=served,
                            in_process=True)

    promoted = command("fxml.promote", f"run_id={run_id}", f"name={REGISTERED}")
    assert promoted.returncode == 0, promoted.stderr
    for number in (1001, 1002):
        submitted = command("fxml.submit", f"model_uri=models:/{REGISTERED}@champion",
                            "numerai_model=fxml_test", FAKE_API, round_number=number)
        assert submitted.returncode == 0, submitted.stderr
    return ws, run_id, command


def live(project, rounds: dict, unresolved: tuple[int, ...] = (), keys: bool = True):
    """``python -m fxml.live_scores`` with the fake client answering ``rounds``' scores."""
    ws = project[0]
    path = ws.root / "fake-numerai" / "scores.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({FAKE_MODELS["fxml_test"]: recorded_round_scores(rounds, unresolved)}))
    env = ws.env(FXML_FAKE_NUMERAI_SCORES=str(path), FXML_FAKE_NUMERAI_DIR=str(served_release(ws)),
                 **(KEYS if keys else {}))
    return subprocess.run([sys.executable, "-m", "fxml.live_scores", "numerai_model=fxml_test", FAKE_API],
                          cwd=ws.root, env=env, capture_output=True, text=True, timeout=600)


def history(ws: Workspace, run_id: str, key: str) -> dict[int, float]:
    values = [(m.step, m.value) for m in ws.client().get_metric_history(run_id, key)]
    assert len(values) == len({step for step, _ in values}), f"duplicate steps in {key}: {values}"
    return dict(values)


def submission_run(ws: Workspace, number: int):
    return next(r for r in ws.runs("fxml-submissions") if r.data.tags["round"] == str(number))


def test_score_names_and_final_values() -> None:
    assert metric_name("v2_corr20") == "live_corr" and metric_name("tc") == "live_tc"
    assert metric_name("corrJ60") == "live_corr_j60"
    rounds = resolved_round_scores(recorded_round_scores({7: {"mmc": 0.5}, 8: {"mmc": 1.0}},
                                                         unresolved=(8,))["submission_scores"])
    assert rounds == {7: {"live_mmc": 0.5}}  # day 20 wins over day 11; unresolved rounds skipped


@pytest.mark.slow
def test_live_scores_twice_adds_only_new_rounds(project) -> None:
    ws, training_run, _ = project
    # round 1000 was submitted outside fxml; round 1002 is not resolved yet
    first = live(project, {1000: ROUND_1, 1001: ROUND_1, 1002: ROUND_2}, unresolved=(1002,))
    assert first.returncode == 0, first.stderr
    assert "logged 2 new round(s) (1001, 1002)" in first.stdout  # 1002: its churn only
    assert "1 round(s) have no fxml submission run" in first.stdout
    run_1001, run_1002 = submission_run(ws, 1001), submission_run(ws, 1002)
    assert history(ws, run_1001.info.run_id, "live_corr") == {1001: pytest.approx(0.021)}
    assert history(ws, run_1001.info.run_id, "live_tc") == {1001: pytest.approx(-0.013)}
    payout = 0.01 * sum(ROUND_1.values())  # the settled payouts of the round's scores
    assert history(ws, run_1001.info.run_id, "live_payout") == {1001: pytest.approx(payout)}
    assert history(ws, training_run, "live_mmc") == {1001: pytest.approx(0.004)}
    assert not history(ws, run_1002.info.run_id, "live_corr")

    # the churn between the two submitted files, recomputed from the files themselves
    files = [pd.read_csv(ws.root / "submissions" / f"fxml_test_round{n}.csv") for n in (1001, 1002)]
    expected_churn = churn(*(dict(zip(f["id"], f["prediction"], strict=True)) for f in files))
    assert history(ws, run_1002.info.run_id, "live_churn") == {1002: pytest.approx(expected_churn)}

    second = live(project, {1000: ROUND_1, 1001: ROUND_1, 1002: ROUND_2})
    assert second.returncode == 0, second.stderr
    assert "logged 1 new round(s) (1002)" in second.stdout
    assert history(ws, run_1002.info.run_id, "live_corr") == {1002: pytest.approx(-0.008)}
    assert history(ws, training_run, "live_tc") == {1001: pytest.approx(-0.013),
                                                     1002: pytest.approx(0.027)}
    assert history(ws, run_1001.info.run_id, "live_corr") == {1001: pytest.approx(0.021)}

    third = live(project, {1000: ROUND_1, 1001: ROUND_1, 1002: ROUND_2})
    assert "logged 0 new round(s)" in third.stdout
    for key in ("live_corr", "live_mmc", "live_tc", "live_bmc", "live_payout", "live_churn"):
        history(ws, training_run, key)  # no duplicate steps anywhere
    version = ws.client().get_model_version(REGISTERED, "1")
    assert version.tags["live_rounds"] == "1001,1002"
    assert float(version.tags["live_tc_mean"]) == pytest.approx((-0.013 + 0.027) / 2)

    # the comparison report shows the live scores of the training run
    page = ws.root / "live.html"
    shown = ws.command("fxml.report", f"runs={training_run}", f"file={page}")
    assert shown.returncode == 0, shown.stderr
    html = page.read_text()
    assert "Live scores from Numerai" in html and "<th>live_tc (mean)</th>" in html
    assert f"<td>{(-0.013 + 0.027) / 2:.4f}</td>" in html


@pytest.mark.slow
def test_live_scores_need_keys_and_never_log_them(project) -> None:
    ws, _, _ = project
    result = live(project, {1001: ROUND_1}, keys=False)
    assert_one_line_error(result, "no Numerai API keys")
    store = (ws.root / "mlruns" / "mlflow.db").read_bytes()
    assert PUBLIC_ID.encode() not in store and SECRET_KEY.encode() not in store
