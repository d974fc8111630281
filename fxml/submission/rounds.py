"""Numerai's rounds through numerapi: the current round, whether it takes submissions now, and the
payout multipliers it pays with.

Shapes (numerapi 3.1, ``Api.list_rounds``): each round is a dict with ``number``, ``openTime`` and
``closeStakingTime`` (datetimes; numerapi's ``check_round_open`` reads the same two) and
``roundScoreConfigs``, a list of score configurations, each with ``name`` (``correlation``,
``meta_model_contribution``, ...), ``version``, ``roundNumberStart``, ``isPayout`` and
``defaultMultiplier``. numerapi's docs ask to pick a score by its exact ``name`` (never by a
display name or a similar multiplier) and, where one name has several configurations, the one
with the newest ``roundNumberStart``, then ``version`` and ``id``. These are public: no keys.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fxml.errors import FxmlError
from fxml.submission.credentials import Credentials, NumeraiFailure, ask_numerai, build_client

CORR_SCORE, MMC_SCORE = "correlation", "meta_model_contribution"
ROUND_SETTING = "scorer.payout_multipliers=round"
SCHEDULE = "rounds open Tuesday to Saturday at 12:00 UTC for an hour, Saturday's over the weekend"
OFFLINE_HINT = "check the network, or for an offline dry run pass round=<number> and live=<file>"


@dataclass(frozen=True)
class RoundInfo:
    number: int
    opens: datetime | None
    closes: datetime | None  # the end of the submission window (closeStakingTime)
    multipliers: dict[str, float]  # score name -> multiplier, for each score the round pays on

    def is_open(self, now: datetime) -> bool:
        return self.opens is not None and self.closes is not None and self.opens <= now < self.closes

    def status_line(self, now: datetime) -> str:
        """One line: is the round open now, until when, or when did it close."""
        if self.is_open(now):
            return f"round {self.number} is open until {_shown(self.closes)}"
        if self.opens is not None and now < self.opens:
            return f"round {self.number} is not open yet (it opens {_shown(self.opens)})"
        if self.closes is not None:
            return f"round {self.number} closed at {_shown(self.closes)}"
        return f"round {self.number} is not open (Numerai gives no submission window for it)"


@dataclass(frozen=True)
class RoundPayout:
    """The CORR and MMC multipliers a round pays with."""

    round: int
    corr: float
    mmc: float


def current_round(client: Any, credentials: Credentials | None, hint: str = OFFLINE_HINT) -> int:
    try:
        number = ask_numerai(client.get_current_round, credentials)
    except NumeraiFailure as failure:
        raise FxmlError(f"could not ask Numerai for the current round ({failure}); {hint}") from None
    if number is None:
        raise FxmlError(f"Numerai reports no current round ({SCHEDULE})")
    return int(number)


def round_info(client: Any, number: int, credentials: Credentials | None) -> RoundInfo:
    """Round ``number`` as ``list_rounds`` describes it."""
    try:
        rounds = ask_numerai(lambda: client.list_rounds(number=number), credentials)
    except NumeraiFailure as failure:
        raise FxmlError(f"could not ask Numerai about round {number} ({failure})") from None
    found = [entry for entry in rounds or [] if int(entry.get("number", -1)) == number]
    if not found:
        raise FxmlError(f"Numerai lists no round {number}")
    return parse_round(found[0])


def parse_round(entry: dict[str, Any]) -> RoundInfo:
    """A ``list_rounds`` entry as a :class:`RoundInfo`."""
    chosen: dict[str, dict[str, Any]] = {}
    for config in sorted(entry.get("roundScoreConfigs") or [], key=_config_order):
        if config.get("isPayout"):
            chosen[str(config["name"])] = config  # later (newer) configurations win
    multipliers = {name: float(config.get("defaultMultiplier") or 0.0) for name, config in chosen.items()}
    return RoundInfo(int(entry["number"]), _utc(entry.get("openTime")),
                     _utc(entry.get("closeStakingTime") or entry.get("closeTime")), multipliers)


def payout_of(info: RoundInfo) -> RoundPayout:
    """The round's CORR and MMC multipliers (0 for one it does not pay on); FxmlError when it pays
    on another score, which fxml's payout-style score does not compute."""
    if not info.multipliers:
        raise FxmlError(f"Numerai lists no payout multipliers for round {info.number}")
    others = sorted(set(info.multipliers) - {CORR_SCORE, MMC_SCORE})
    if others:
        paid = ", ".join(f"{name} ({info.multipliers[name]:g})" for name in others)
        raise FxmlError(f"round {info.number} pays on {paid}, which fxml's payout-style score (CORR and "
                        "MMC) does not compute")
    return RoundPayout(info.number, info.multipliers.get(CORR_SCORE, 0.0),
                       info.multipliers.get(MMC_SCORE, 0.0))


def round_payout(api_target: str, cache: Path | None = None) -> RoundPayout:
    """The current round's multipliers, asked once per round: ``cache`` (default
    ``default_payout_cache()``) keeps the last round's with its number, so later runs in the same
    round ask only for the round number (Numerai keeps a round's multipliers as they were set)."""
    cache = cache or default_payout_cache()
    try:
        client = build_client({"_target_": api_target}, None)  # public queries: never the keys
        number = current_round(client, None, hint="check the network")
        cached = read_cached_payout(cache, number)
        if cached is not None:
            return cached
        payout = payout_of(round_info(client, number, None))
    except FxmlError as error:
        # the user asked for the round's values: no quiet fallback to the configured ones
        raise FxmlError(f"{ROUND_SETTING}: {error}; scorer.payout_multipliers=config scores with the "
                        "configured weights") from None
    write_cached_payout(cache, payout)
    return payout


def default_payout_cache() -> Path:
    """``payout_round.json`` in the folder Numerai's data goes to (conf/data/v5.yaml's directory:
    ``${FXML_DATA_DIR:-data}/numerai``), relative to the folder the command runs in."""
    return Path(os.environ.get("FXML_DATA_DIR") or "data") / "numerai" / "payout_round.json"


def read_cached_payout(cache: Path, number: int) -> RoundPayout | None:
    """The cached multipliers if they are round ``number``'s; None otherwise (or unreadable)."""
    try:
        saved = json.loads(cache.read_text())
        payout = RoundPayout(int(saved["round"]), float(saved["corr_multiplier"]),
                             float(saved["mmc_multiplier"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return payout if payout.round == number else None


def write_cached_payout(cache: Path, payout: RoundPayout) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.part")
    partial.write_text(json.dumps({"round": payout.round, "corr_multiplier": payout.corr,
                                   "mmc_multiplier": payout.mmc}) + "\n")
    partial.replace(cache)  # whole or not at all, for runs starting together


def _config_order(config: dict[str, Any]) -> tuple[int, int, str, str]:
    """Oldest first: by ``roundNumberStart``, then ``version`` (a number as text), then ``id``."""
    version = str(config.get("version") or "")
    return (int(config.get("roundNumberStart") or 0), int(version) if version.isdigit() else -1,
            version, str(config.get("id") or ""))


def _utc(value: Any) -> datetime | None:
    """numerapi's datetime (or an ISO text) in UTC; None when absent."""
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _shown(moment: datetime | None) -> str:
    return "an unknown time" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"
