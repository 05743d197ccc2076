"""Reading a judge's reply, mapping it from positions (A/B) to tiers, and the label it gives.

A reply is one JSON object `{"score_a", "score_b", "winner", "rationale"}`; code fences and text
around the object are tolerated, and so is a missing `winner` when both scores are there (the
higher score wins). Anything else is a `BadVerdict` with a short reason; the pair stays
unjudged. Scores are 1..10; `winner` is `A`, `B` or `tie` (`C`, `draw`, `equal`, `none` and
`both` count as a tie).

From the cheap tier's side a verdict is a `win`, `tie` or `loss`. A pair judged in both orders
whose two verdicts disagree was decided by position, not content: it counts as a `tie`, and
`consistent` is False. The label is the cheapest sufficient tier: the cheap one unless it lost.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

Winner = Literal["A", "B", "tie"]
Outcome = Literal["win", "tie", "loss"]

MIN_SCORE, MAX_SCORE = 1.0, 10.0
#: Characters of the rationale kept in a labelled record.
MAX_RATIONALE = 600

_TIE_WORDS = {"tie", "c", "draw", "equal", "none", "both", "neither"}
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One reply, by position."""

    score_a: float | None
    score_b: float | None
    winner: Winner
    rationale: str


@dataclass(frozen=True, slots=True)
class BadVerdict:
    reason: str


@dataclass(frozen=True, slots=True)
class TierVerdict:
    """One reply, by tier: `cheap` is the cheaper tier of the pair."""

    outcome: Outcome
    cheap_score: float | None
    costly_score: float | None
    rationale: str
    #: True when the answer shown first won (position bias is measured from this)
    first_won: bool


def parse_verdict(text: str) -> Verdict | BadVerdict:
    data = _json_object(text)
    if data is None:
        return BadVerdict("unparseable verdict (no JSON object)")
    score_a = _score(data.get("score_a"))
    score_b = _score(data.get("score_b"))
    if isinstance(score_a, BadVerdict):
        return score_a
    if isinstance(score_b, BadVerdict):
        return score_b
    winner = _winner(data.get("winner"), score_a, score_b)
    if winner is None:
        return BadVerdict("verdict without a usable winner")
    rationale = data.get("rationale")
    text_rationale = rationale.strip()[:MAX_RATIONALE] if isinstance(rationale, str) else ""
    return Verdict(score_a, score_b, winner, text_rationale)


def _json_object(text: str) -> dict[str, Any] | None:
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        start = candidate.find("{")
        end = candidate.rfind("}")
        if start < 0 or end <= start:
            continue
        try:
            data = orjson.loads(candidate[start : end + 1])
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data
    return None


def _score(value: object) -> float | BadVerdict | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip().split("/")[0])
        except ValueError:
            return BadVerdict("score is not a number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return BadVerdict("score is not a number")
    number = float(value)
    if not MIN_SCORE <= number <= MAX_SCORE:
        return BadVerdict(f"score {number:g} outside {MIN_SCORE:g}..{MAX_SCORE:g}")
    return number


def _winner(value: object, score_a: float | None, score_b: float | None) -> Winner | None:
    if isinstance(value, str):
        word = value.strip().strip("[]().").lower()
        if word in {"a", "answer a", "answer_a"}:
            return "A"
        if word in {"b", "answer b", "answer_b"}:
            return "B"
        if word in _TIE_WORDS:
            return "tie"
        return None
    if value is None and score_a is not None and score_b is not None:
        return "A" if score_a > score_b else "B" if score_b > score_a else "tie"
    return None


def by_tier(verdict: Verdict, cheap_first: bool) -> TierVerdict:
    """The verdict seen from the cheap tier, given which answer was shown first (as A)."""
    cheap_score, costly_score = (
        (verdict.score_a, verdict.score_b) if cheap_first else (verdict.score_b, verdict.score_a)
    )
    if verdict.winner == "tie":
        outcome: Outcome = "tie"
    else:
        cheap_won = (verdict.winner == "A") == cheap_first
        outcome = "win" if cheap_won else "loss"
    return TierVerdict(outcome, cheap_score, costly_score, verdict.rationale, verdict.winner == "A")


@dataclass(frozen=True, slots=True)
class Combined:
    """The verdict of a pair: one order, or both orders folded into one."""

    outcome: Outcome
    cheap_score: float | None
    costly_score: float | None
    rationale: str
    #: None unless both orders were judged
    consistent: bool | None


def combine(first: TierVerdict, second: TierVerdict | None) -> Combined:
    if second is None:
        return Combined(first.outcome, first.cheap_score, first.costly_score, first.rationale, None)
    consistent = first.outcome == second.outcome
    outcome: Outcome = first.outcome if consistent else "tie"
    return Combined(
        outcome,
        _mean(first.cheap_score, second.cheap_score),
        _mean(first.costly_score, second.costly_score),
        first.rationale,
        consistent,
    )


def _mean(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return a if b is None else b
    return (a + b) / 2


def label_for(outcome: Outcome, cheap: str, costly: str) -> str:
    """The cheapest sufficient tier: the cheap one unless the costly one was judged better."""
    return costly if outcome == "loss" else cheap


def evidence(
    combined: Combined,
    *,
    cheap: str,
    costly: str,
    models: Mapping[str, str],
    judge_model: str,
    cheap_first: bool,
    swapped: bool,
) -> dict[str, Any]:
    """The `evidence` of a labelled record: per tier `<tier>_correct` (sufficient: not beaten)
    and `<tier>_score`, the models, the outcome and the judge's rationale."""
    found: dict[str, Any] = {
        "label_rule": "judge",
        "judge_model": judge_model,
        "outcome": combined.outcome,
        "cheap_tier": cheap,
        "costly_tier": costly,
        f"{cheap}_correct": combined.outcome != "loss",
        f"{costly}_correct": combined.outcome != "win",
        "shown_first": cheap if cheap_first else costly,
        "swapped": swapped,
        "rationale": combined.rationale,
    }
    if combined.cheap_score is not None:
        found[f"{cheap}_score"] = combined.cheap_score
    if combined.costly_score is not None:
        found[f"{costly}_score"] = combined.costly_score
    if combined.consistent is not None:
        found["consistent"] = combined.consistent
    for tier in (cheap, costly):
        if models.get(tier):
            found[f"{tier}_model"] = models[tier]
    return found
