"""Mirrored pairs as the capture writes them, and the per-pair choices of a judging run.

A pair is one JSON object per line:

    {"id": "<x-request-id>", "messages": [...chat messages...],
     "decision": {"tier": "weak", "rule": "keyword", "classifier": "v7"},
     "primary": {"tier": "weak", "model": "qwen3-4b", "text": "...", "status": 200,
                 "latency_ms": 212.0, "tokens_in": 40, "tokens_out": 120},
     "shadow":  {"tier": "strong", "model": "glm-5", "text": "...", ...} or null,
     "missing": "shadow: no answer within 30 s"}

`segment` (an object of segment values, e.g. `{"user_segment": "pro"}`) is optional. A side is
usable when it has a text and, if a status is given, status 200. A pair whose side is missing or
unusable is never judged and never joined with another request: it is reported as unjudged with
the reason.

Which answer is shown first, and whether a pair is also asked the other way round, are
functions of the seed and the pair id alone, so a resumed or repeated run makes the same
choices.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Side:
    tier: str
    model: str
    text: str | None
    status: int | None = None

    @property
    def usable(self) -> bool:
        return bool(self.text) and self.status in (None, 200)


@dataclass(frozen=True, slots=True)
class Pair:
    id: str
    messages: Sequence[Mapping[str, Any]]
    primary: Side | None
    shadow: Side | None
    data: Mapping[str, Any] = field(repr=False)

    def missing_reason(self) -> str | None:
        """Why the pair cannot be judged, or None."""
        for name, side in (("primary", self.primary), ("shadow", self.shadow)):
            if side is None:
                why = self.data.get("missing")
                return f"{name} missing" + (f" ({why})" if isinstance(why, str) and why else "")
            if not side.usable:
                return f"{name} unusable (status {side.status}, {len(side.text or '')} chars)"
        assert self.primary is not None and self.shadow is not None
        if self.primary.tier == self.shadow.tier:
            return "both sides from the same tier"
        if not self.messages:
            return "no request messages"
        return None


@dataclass(slots=True)
class PairStats:
    lines: int = 0
    malformed: int = 0
    first_problem: str = ""


def _side(value: object) -> Side | None:
    if not isinstance(value, Mapping):
        return None
    tier, model, text, status = (value.get(k) for k in ("tier", "model", "text", "status"))
    if not isinstance(tier, str) or not tier:
        return None
    return Side(
        tier=tier,
        model=model if isinstance(model, str) else "",
        text=text if isinstance(text, str) else None,
        status=status if isinstance(status, int) and not isinstance(status, bool) else None,
    )


def parse_pair(data: Mapping[str, Any]) -> Pair | str:
    """A pair from a decoded line, or why the line is malformed."""
    raw_id = data.get("id")
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or raw_id == "":
        return "no id"
    messages = data.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        return "messages is not a list of objects"
    for name in ("primary", "shadow"):
        if data.get(name) is not None and _side(data.get(name)) is None:
            return f"{name} is not an object with a tier"
    return Pair(str(raw_id), messages, _side(data.get("primary")), _side(data.get("shadow")), data)


def read_pairs(stream: Iterable[bytes], stats: PairStats) -> Iterator[Pair]:
    """The pairs of JSON lines (a file, or lines from a Redis stream); malformed lines are
    skipped and counted."""
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        stats.lines += 1
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            data = None
        found = parse_pair(data) if isinstance(data, dict) else "not a JSON object"
        if isinstance(found, str):
            stats.malformed += 1
            if not stats.first_problem:
                stats.first_problem = f"line {lineno}: {found}"
            continue
        yield found


def _unit(seed: int, pair_id: str, purpose: str) -> float:
    digest = hashlib.blake2b(f"{seed}\x1f{purpose}\x1f{pair_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


def cheap_first(seed: int, pair_id: str) -> bool:
    """Whether the cheap tier's answer is shown first (as A): half the pairs, by seed and id."""
    return _unit(seed, pair_id, "order") < 0.5


def asked_swapped(seed: int, pair_id: str, share: float) -> bool:
    """Whether the pair is also judged in the other order (a `share` of pairs)."""
    return share > 0 and _unit(seed, pair_id, "swap") < share


def judged_ids(path: Path) -> set[str]:
    """Ids that already have a label in an output file (a resumed run skips them); unreadable
    lines of a file cut short by a crash are ignored."""
    found: set[str] = set()
    if not path.exists():
        return found
    with path.open("rb") as stream:
        for line in stream:
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(data, dict) and isinstance(data.get("label"), str):
                found.add(str(data.get("id")))
    return found
