"""Judging one pair: ask the judge in one order (and on a sample also in the other), read the
replies, and build the labelled record or the reason the pair stays unjudged.

Runs in a worker thread; pure but for the client call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from extproc.tuning.judge_client import JudgeClient, JudgeError, Reply
from extproc.tuning.judge_pairs import Pair, Side, asked_swapped, cheap_first
from extproc.tuning.judge_prompt import Rubric, build_messages, render_request
from extproc.tuning.judge_verdict import (
    BadVerdict,
    TierVerdict,
    by_tier,
    combine,
    evidence,
    label_for,
    parse_verdict,
)
from extproc.tuning.segments import dominant_script

#: Fields of a pair copied into its labelled record (eval breaks results down by them).
PASSED_FIELDS = ("source", "segment", "time")


@dataclass(frozen=True, slots=True)
class Plan:
    """What every pair of a run shares."""

    rubric: Rubric
    judge_model: str
    seed: int
    swap_share: float
    #: tier name -> rank (0 = cheapest), from the config
    ranks: Mapping[str, int]


@dataclass(slots=True)
class Result:
    pair: Pair
    record: dict[str, Any] | None = None
    #: (kind, reason) when unjudged
    unjudged: tuple[str, str] | None = None
    fatal: bool = False
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    swap_asked: bool = False
    #: per judged order: did the answer shown first win
    first_won: list[bool] = field(default_factory=list)
    consistent: bool | None = None
    lang: str = ""


def sides(pair: Pair, ranks: Mapping[str, int]) -> tuple[Side, Side] | str:
    """(cheap, costly) sides of a pair, or why they cannot be ordered."""
    assert pair.primary is not None and pair.shadow is not None
    unknown = [s.tier for s in (pair.primary, pair.shadow) if s.tier not in ranks]
    if unknown:
        return f"tier {unknown[0]!r} is not in the config"
    a, b = pair.primary, pair.shadow
    return (a, b) if ranks[a.tier] < ranks[b.tier] else (b, a)


def judge_pair(client: JudgeClient, pair: Pair, plan: Plan) -> Result:
    result = Result(pair)
    ordered = sides(pair, plan.ranks)
    if isinstance(ordered, str):
        result.unjudged = ("unknown_tier", ordered)
        return result
    cheap, costly = ordered
    result.lang = dominant_script(render_request(pair.messages))
    first = cheap_first(plan.seed, pair.id)
    orders = [first]
    if asked_swapped(plan.seed, pair.id, plan.swap_share):
        orders.append(not first)
        result.swap_asked = True
    verdicts: list[tuple[bool, TierVerdict]] = []
    problem: tuple[str, str] | None = None
    for cheap_shown_first in orders:
        shown = (cheap, costly) if cheap_shown_first else (costly, cheap)
        messages = build_messages(
            plan.rubric, pair.messages, shown[0].text or "", shown[1].text or ""
        )
        found = _ask(client, messages, result)
        if isinstance(found, tuple):
            problem = problem or found
            if result.fatal:
                break
            continue
        verdicts.append((cheap_shown_first, by_tier(found, cheap_shown_first)))
    if not verdicts:
        result.unjudged = problem or ("judge_error", "no verdict")
        return result
    result.first_won = [v.first_won for _, v in verdicts]
    shown_first, one = verdicts[0]
    combined = combine(one, verdicts[1][1] if len(verdicts) > 1 else None)
    result.consistent = combined.consistent
    record: dict[str, Any] = {
        "id": pair.id,
        "messages": list(pair.messages),
        "label": label_for(combined.outcome, cheap.tier, costly.tier),
    }
    decision = pair.data.get("decision")
    if isinstance(decision, Mapping):
        for key in ("tier", "rule", "classifier"):
            if isinstance(decision.get(key), str):
                record[key] = decision[key]
    for key in PASSED_FIELDS:
        if key in pair.data:
            record[key] = pair.data[key]
    record.setdefault("source", "mirror")
    raw = pair.data.get("primary")
    if isinstance(raw, Mapping) and isinstance(raw.get("tokens_in"), int):
        record["tokens_in"] = raw["tokens_in"]  # the same prompt for both tiers
    record["evidence"] = evidence(
        combined,
        cheap=cheap.tier,
        costly=costly.tier,
        models={cheap.tier: cheap.model, costly.tier: costly.model},
        judge_model=plan.judge_model,
        cheap_first=shown_first,
        swapped=len(verdicts) > 1,
    )
    result.record = record
    return result


def _ask(
    client: JudgeClient, messages: list[dict[str, str]], result: Result
) -> Any:  # a Verdict, or (kind, reason)
    try:
        reply = client.ask(messages)
    except JudgeError as exc:
        result.requests += exc.attempts
        result.fatal = exc.fatal
        kind = "timeout" if "timed out" in exc.reason else "judge_error"
        return (kind, exc.reason)
    result.requests += reply.attempts
    result.tokens_in += reply.tokens_in
    result.tokens_out += reply.tokens_out
    refused = _refusal(reply)
    if refused:
        return ("refused", refused)
    assert reply.text is not None
    verdict = parse_verdict(reply.text)
    if isinstance(verdict, BadVerdict):
        return ("unparseable", verdict.reason)
    return verdict


def _refusal(reply: Reply) -> str:
    if reply.refusal:
        return "judge refused"
    if reply.finish_reason == "content_filter":
        return "judge answer filtered (content_filter)"
    if not reply.text or not reply.text.strip():
        return "judge answered nothing"
    return ""
