"""Numerai's rounds: the payout-style score with the current round's multipliers
(``scorer.payout_multipliers=round``), and ``fxml.submit`` as a daily job that says in one line
whether the round is open, already submitted or closed, and downloads a round's live file once.

In process, with the fake numerapi client of tests/fakes.py: it answers ``list_rounds`` in
numerapi 3.1's shape and logs every call, so the tests can count what reached "Numerai".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import InProcessResult, Workspace, assert_one_line_error
from tests.fakes import (
    LOG_ENV,
    MULTIPLIERS_ENV,
    ROUND_ENV,
    WINDOW_ENV,
    recorded_calls,
    round_entry,
)
from tests.helpers import KEYS, PUBLIC_ID, SECRET_KEY, served_release

FAKE = "tests.fakes.FakeNumerAPI"
ROUND_PAYOUT = ("model=ridge", "scorer.payout_multipliers=round", f"scorer.payout_api={FAKE}",
                "scorer.mpc=false", "scorer.diagnostics=false", "scorer.fnc=false")
SCHEDULE = "rounds open Tuesday to Saturday at 12:00 UTC for an hour, Saturday's over the weekend"
OFFLINE_REASON = ("Error Connecting: HTTPSConnectionPool(host='api-tournament.numer.ai', port=443): Max "
                  "retries exceeded with url: / (Caused by NameResolutionError(\"Failed to resolve "
                  "'api-tournament.numer.ai'\"))")


@dataclass
class Trained:
    """A scratch project, its fake Numerai's call log, and the run the module's fixture trained."""

    ws: Workspace
    result: InProcessResult | None = None
    run_id: str = ""

    @property
    def log(self) -> Path:
        return self.ws.root / "fake-numerai" / "calls.jsonl"

    def calls(self, name: str) -> list[dict]:
        return [call for call in recorded_calls(self.log) if call["call"] == name]

    def train(self, *args: str, round_number: int = 1234,
              multipliers: str = "correlation=0.75,meta_model_contribution=1.25") -> InProcessResult:
        return self.ws.train(*ROUND_PAYOUT, *args, **{LOG_ENV: str(self.log), ROUND_ENV: str(round_number),
                                                      MULTIPLIERS_ENV: multipliers})

    def submit(self, *args: str, round_number: int, window: tuple[datetime, datetime] | None = None,
               api: str = FAKE) -> InProcessResult:
        env = {LOG_ENV: str(self.log), ROUND_ENV: str(round_number),
               "FXML_FAKE_NUMERAI_DIR": str(served_release(self.ws)), **KEYS}
        if window is not None:
            env[WINDOW_ENV] = "/".join(moment.isoformat() for moment in window)
        return self.ws.command("fxml.submit", f"model_uri=runs:/{self.run_id}/model",
                               "numerai_model=fxml_test", f"api._target_={api}", *args, **env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A ridge run scored with round 1234's multipliers (CORR 0.75, MMC 1.25), its model logged."""
    ws = Workspace(tmp_path_factory.mktemp("rounds"))
    trained = Trained(ws)
    trained.result = trained.train("tracking.run_name=round-payout")
    assert trained.result.returncode == 0, trained.result.stderr
    trained.run_id = next(r.info.run_id for r in ws.runs() if r.info.run_name == "round-payout")
    return trained


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def shown(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


# --- payout multipliers ----------------------------------------------------------------------------


def test_the_round_multipliers_score_the_payout_and_are_logged(trained: Trained) -> None:
    run = trained.ws.client().get_run(trained.run_id)
    assert {key: value for key, value in run.data.params.items() if key.startswith("payout.")} == {
        "payout.corr_multiplier": "0.75", "payout.mmc_multiplier": "1.25", "payout.round": "1234"}
    per_era = trained.ws.artifact_frame(run, "metrics/per_era.csv")
    expected = (0.75 * per_era["corr"] + 1.25 * per_era["mmc"]).clip(-0.05, 0.05)
    np.testing.assert_allclose(per_era["payout"], expected, atol=1e-12)
    assert run.data.metrics["payout_mean"] == pytest.approx(expected.mean(), abs=1e-9)
    configured = (0.5 * per_era["corr"] + 2.0 * per_era["mmc"]).clip(-0.05, 0.05).mean()
    assert abs(expected.mean() - configured) > 1e-4  # the round's weights, not the configured ones
    assert trained.result is not None
    assert "│ payout (round 1234: 0.75*CORR + 1.25*MMC, clip ±0.05) │" in trained.result.stdout
    assert trained.calls("list_rounds") == [{"call": "list_rounds", "number": 1234}]
    cache = trained.ws.root / "data" / "numerai" / "payout_round.json"
    assert json.loads(cache.read_text()) == {"round": 1234, "corr_multiplier": 0.75, "mmc_multiplier": 1.25}


def test_a_second_run_in_the_round_reads_the_cached_multipliers(trained: Trained) -> None:
    asked = len(trained.calls("get_current_round"))
    # Numerai's answer changed: the cache, not a second list_rounds, gives round 1234's values
    again = trained.train("tracking.run_name=round-payout-again", multipliers="correlation=9,"
                                                                              "meta_model_contribution=9")
    assert again.returncode == 0, again.stderr
    run = next(r for r in trained.ws.runs() if r.info.run_name == "round-payout-again")
    assert run.data.params["payout.corr_multiplier"] == "0.75"
    assert run.data.params["payout.mmc_multiplier"] == "1.25"
    assert trained.calls("list_rounds") == [{"call": "list_rounds", "number": 1234}]
    assert len(trained.calls("get_current_round")) == asked + 1


def test_a_new_round_is_asked_for_and_replaces_the_cache(trained: Trained, monkeypatch) -> None:
    from fxml.submission.rounds import RoundPayout, round_payout

    cache = trained.ws.root / "data" / "numerai" / "payout_round.json"
    for name, value in ((LOG_ENV, str(trained.log)), (ROUND_ENV, "1235"),
                        (MULTIPLIERS_ENV, "correlation=0.25,meta_model_contribution=3")):
        monkeypatch.setenv(name, value)
    assert round_payout(FAKE, cache) == RoundPayout(1235, 0.25, 3.0)
    assert round_payout(FAKE, cache) == RoundPayout(1235, 0.25, 3.0)
    assert trained.calls("list_rounds") == [{"call": "list_rounds", "number": 1234},
                                            {"call": "list_rounds", "number": 1235}]
    assert json.loads(cache.read_text()) == {"round": 1235, "corr_multiplier": 0.25, "mmc_multiplier": 3.0}


def test_configured_weights_are_labelled_and_logged_as_such(trained: Trained) -> None:
    result = trained.ws.train("model=ridge", "scorer.mpc=false", "scorer.diagnostics=false",
                              "scorer.fnc=false", "scorer.payout_corr_weight=0.4",
                              "tracking.run_name=configured", "tracking.log_model=false")
    assert result.returncode == 0, result.stderr
    assert "│ payout (configured: 0.4*CORR + 2*MMC, clip ±0.05) │" in result.stdout
    run = next(r for r in trained.ws.runs() if r.info.run_name == "configured")
    assert {key: value for key, value in run.data.params.items() if key.startswith("payout.")} == {
        "payout.corr_multiplier": "0.4", "payout.mmc_multiplier": "2.0"}


def test_round_multipliers_without_a_network_are_one_line(trained: Trained) -> None:
    before = len(recorded_calls(trained.log))
    result = trained.train("scorer.payout_api=tests.fakes.OfflineNumerAPI", "tracking.run_name=offline")
    assert_one_line_error(result)
    assert result.stderr.strip() == (
        f"fxml: error: scorer.payout_multipliers=round: could not ask Numerai for the current round "
        f"({OFFLINE_REASON}); check the network; scorer.payout_multipliers=config scores with the "
        "configured weights")
    assert "Error Connecting" not in result.logs  # numerapi's own report is kept off the terminal
    assert len(recorded_calls(trained.log)) == before


def test_numerai_payout_configurations_are_read_by_exact_name() -> None:
    from fxml.errors import FxmlError
    from fxml.submission.rounds import RoundPayout, parse_round, payout_of

    opens = datetime(2026, 12, 8, 12, tzinfo=UTC)
    entry = round_entry(1240, opens, opens + timedelta(hours=1),
                        {"correlation": 0.5, "meta_model_contribution": 2.0})
    # a newer configuration of the same score (a later roundNumberStart) wins
    entry["roundScoreConfigs"].append({**entry["roundScoreConfigs"][1], "id": "rsc-new",
                                       "roundNumberStart": 1239, "defaultMultiplier": 1.5})
    info = parse_round(entry)
    assert info.multipliers == {"correlation": 0.5, "meta_model_contribution": 1.5}
    assert payout_of(info) == RoundPayout(1240, 0.5, 1.5)
    assert payout_of(parse_round(round_entry(1241, opens, opens, {"meta_model_contribution": 2.0}))) \
        == RoundPayout(1241, 0.0, 2.0)
    with pytest.raises(FxmlError) as error:
        payout_of(parse_round(round_entry(1242, opens, opens, {"correlation": 0.5, "alpha": 0.3})))
    assert str(error.value) == ("round 1242 pays on alpha (0.3), which fxml's payout-style score (CORR "
                                "and MMC) does not compute")
    with pytest.raises(FxmlError, match="^Numerai lists no payout multipliers for round 1243$"):
        payout_of(parse_round(round_entry(1243, opens, opens, {})))


def test_round_status_lines() -> None:
    from fxml.submission.rounds import RoundInfo

    opens = datetime(2026, 12, 12, 12, tzinfo=UTC)  # a Saturday: open over the weekend
    info = RoundInfo(1244, opens, datetime(2026, 12, 14, 14, 30, tzinfo=UTC), {})
    assert info.status_line(opens - timedelta(minutes=5)) == \
        "round 1244 is not open yet (it opens 2026-12-12 12:00 UTC)"
    assert info.status_line(opens + timedelta(days=1)) == "round 1244 is open until 2026-12-14 14:30 UTC"
    assert info.status_line(opens + timedelta(days=3)) == "round 1244 closed at 2026-12-14 14:30 UTC"


# --- daily submissions -----------------------------------------------------------------------------


def test_an_open_round_is_uploaded_once_unless_forced_and_downloaded_once(trained: Trained) -> None:
    now = datetime.now(UTC)
    window = (minute(now - timedelta(minutes=30)), minute(now + timedelta(minutes=31)))
    first = trained.submit(round_number=1300, window=window)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == f"round 1300 is open until {shown(window[1])}"
    uploads = [call for call in recorded_calls(trained.log) if call["call"] == "upload_predictions"]
    assert [call["round"] for call in uploads] == [1300]
    [uploaded] = [r for r in trained.ws.runs("fxml-submissions") if r.data.tags.get("round") == "1300"]

    again = trained.submit(round_number=1300, window=window)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"round 1300 was already submitted for fxml_test by run {uploaded.info.run_id}: nothing uploaded "
        "(force=true uploads again)"]

    forced = trained.submit("force=true", round_number=1300, window=window)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines()[0] == f"round 1300 is open until {shown(window[1])}"
    uploads = [call for call in recorded_calls(trained.log) if call["call"] == "upload_predictions"]
    assert [call["round"] for call in uploads] == [1300, 1300]
    # two files prepared from one download: the round's live file is kept and reused
    assert trained.calls("download_dataset") == [
        {"call": "download_dataset", "filename": "v5.3/live.parquet", "round": 1300}]
    assert (trained.ws.root / "data" / "numerai" / "v5.3" / "live_1300.parquet").is_file()
    assert not list((trained.ws.root / "data" / "numerai" / "v5.3").glob("*.part"))
    for result in (first, again, forced):
        assert PUBLIC_ID not in result.stdout + result.stderr + result.logs
        assert SECRET_KEY not in result.stdout + result.stderr + result.logs


def test_a_closed_round_is_one_line_and_nothing_is_fetched(trained: Trained) -> None:
    now = datetime.now(UTC)
    window = (minute(now - timedelta(hours=3)), minute(now - timedelta(hours=2)))
    before = recorded_calls(trained.log)
    result = trained.submit(round_number=1301, window=window)
    assert_one_line_error(result)
    assert result.stderr.strip() == (f"fxml: error: round 1301 closed at {shown(window[1])}: nothing "
                                     f"uploaded ({SCHEDULE})")
    new = [call["call"] for call in recorded_calls(trained.log)[len(before):]]
    assert new == ["get_current_round", "list_rounds"]  # no live download, no upload

    rehearsal = trained.submit("dry_run=true", round_number=1301, window=window)
    assert rehearsal.returncode == 0, rehearsal.stderr
    assert rehearsal.stdout.splitlines()[0] == f"round 1301 closed at {shown(window[1])}"
    assert "dry run: wrote and validated" in rehearsal.stdout


@pytest.mark.parametrize("given", ["round=5", "live=live.parquet"])
def test_an_offline_dry_run_missing_round_or_live_is_one_line_before_any_call(trained: Trained,
                                                                              given: str) -> None:
    before = len(recorded_calls(trained.log))
    result = trained.submit("dry_run=true", given, round_number=1302, api="tests.fakes.NoNetworkNumerAPI")
    assert_one_line_error(result)
    assert result.stderr.strip() == ("fxml: error: an offline dry run needs round=<number> and "
                                     f"live=<file> (only {given} is given)")
    assert len(recorded_calls(trained.log)) == before


def test_a_dry_run_without_a_network_is_one_line(trained: Trained) -> None:
    result = trained.submit("dry_run=true", round_number=1303, api="tests.fakes.OfflineNumerAPI")
    assert_one_line_error(result)
    assert result.stderr.strip() == (
        f"fxml: error: could not ask Numerai for the current round ({OFFLINE_REASON}); check the "
        "network, or for an offline dry run pass round=<number> and live=<file>")
    assert "Error Connecting" not in result.logs
