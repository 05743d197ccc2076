"""The judged quality of the cheap tier as Prometheus metrics (`cascade judge --metrics-file`,
`--push-gateway`).

Counters are computed from the whole labelled file (which a resumed run only appends to), so
they only grow while the file grows, and `increase()` over a window gives that window's verdicts:

- `cascade_judge_verdicts_total{tier, classifier, lang, length, segment, outcome}`: verdicts on
  pairs whose cheap tier is `tier` (the tier the request was routed to), by the classifier
  version that routed it, the request's dominant script, its length bucket (characters), the
  user segment captured from `capture.segment_header`, and `outcome` (win, tie, loss);
- `cascade_judge_swap_checks_total{result}`: pairs judged both ways, `agree` or `disagree`;

and gauges about the last run: `cascade_judge_unjudged{kind}`, `cascade_judge_last_run_cost`,
`cascade_judge_last_run_timestamp_seconds`.

Label values from traffic (the segment) are bounded: at most `max_segments` distinct values, the
rest are `(other)`; each value is cut to 64 characters and escaped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from extproc.tuning.evaluate import LENGTH_BUCKETS
from extproc.tuning.judge_prompt import render_request
from extproc.tuning.segments import dominant_script

VERDICTS = "cascade_judge_verdicts_total"
SWAP_CHECKS = "cascade_judge_swap_checks_total"
UNJUDGED = "cascade_judge_unjudged"
LAST_COST = "cascade_judge_last_run_cost"
LAST_RUN = "cascade_judge_last_run_timestamp_seconds"
LABELS = ("tier", "classifier", "lang", "length", "segment", "outcome")
OTHER = "(other)"
NONE = "(none)"
MAX_VALUE_CHARS = 64


def length_bucket(chars: int) -> str:
    return next((label for limit, label in LENGTH_BUCKETS if chars < limit), ">10k")


def _segment(record: Mapping[str, Any]) -> str:
    segment = record.get("segment")
    value = segment.get("user") if isinstance(segment, Mapping) else None
    return value[:MAX_VALUE_CHARS] if isinstance(value, str) and value else NONE


def verdict_key(record: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The label values of one labelled record, or None when it is not a judge's label."""
    evidence = record.get("evidence")
    if not isinstance(evidence, Mapping) or evidence.get("label_rule") != "judge":
        return None
    outcome = evidence.get("outcome")
    if outcome not in ("win", "tie", "loss"):
        return None
    messages = record.get("messages")
    text = render_request(messages) if isinstance(messages, list) else ""
    tier = evidence.get("cheap_tier") or record.get("tier") or NONE
    classifier = record.get("classifier") or NONE
    return (
        str(tier)[:MAX_VALUE_CHARS],
        str(classifier)[:MAX_VALUE_CHARS],
        dominant_script(text),
        length_bucket(len(text)),
        _segment(record),
        str(outcome),
    )


class VerdictCounts:
    def __init__(self, max_segments: int = 20) -> None:
        self.max_segments = max_segments
        self.verdicts: Counter[tuple[str, ...]] = Counter()
        self.swap: Counter[str] = Counter()
        self._segments: set[str] = set()

    def add(self, record: Mapping[str, Any]) -> None:
        key = verdict_key(record)
        if key is None:
            return
        segment = key[4]
        if segment not in self._segments:
            if len(self._segments) >= self.max_segments:
                key = (*key[:4], OTHER, key[5])
            else:
                self._segments.add(segment)
        self.verdicts[key] += 1
        consistent = record["evidence"].get("consistent")
        if isinstance(consistent, bool):
            self.swap["agree" if consistent else "disagree"] += 1

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> VerdictCounts:
        for record in records:
            self.add(record)
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Iterable[str], values: Iterable[str]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


def exposition(
    counts: VerdictCounts,
    *,
    unjudged: Mapping[str, int],
    cost: float | None,
    finished: float,
) -> str:
    """Prometheus text format (what a textfile collector or a Pushgateway takes)."""
    lines = [
        f"# HELP {VERDICTS} Judge verdicts on mirrored pairs, from the cheap tier's side",
        f"# TYPE {VERDICTS} counter",
    ]
    for key, value in sorted(counts.verdicts.items()):
        lines.append(f"{VERDICTS}{{{_labels(LABELS, key)}}} {value}")
    lines += [
        f"# HELP {SWAP_CHECKS} Pairs judged in both orders: did the verdicts agree",
        f"# TYPE {SWAP_CHECKS} counter",
    ]
    for result in ("agree", "disagree"):
        lines.append(f'{SWAP_CHECKS}{{result="{result}"}} {counts.swap.get(result, 0)}')
    lines += [
        f"# HELP {UNJUDGED} Pairs the last run could not judge, by kind",
        f"# TYPE {UNJUDGED} gauge",
    ]
    for kind, value in sorted(unjudged.items()):
        lines.append(f'{UNJUDGED}{{kind="{_escape(kind)}"}} {value}')
    if cost is not None:
        lines += [
            f"# HELP {LAST_COST} What the last run's judge requests cost",
            f"# TYPE {LAST_COST} gauge",
            f"{LAST_COST} {cost:.6f}",
        ]
    lines += [
        f"# HELP {LAST_RUN} When the last judge run ended (Unix time)",
        f"# TYPE {LAST_RUN} gauge",
        f"{LAST_RUN} {finished:.3f}",
    ]
    return "\n".join(lines) + "\n"
