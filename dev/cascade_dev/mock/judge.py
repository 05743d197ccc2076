"""The mock backend as a pairwise judge (`--judge fair|first`): verdicts for `cascade judge`.

The request's last user message must hold the two answers between `<answer_a>` … `</answer_a>`
and `<answer_b>` … `</answer_b>` (the shipped rubric does). The verdict is the JSON object the
rubric asks for, a pure function of the two answers:

- `fair`: each answer's score is the number in a `[[score:N]]` marker it contains (1..10), else
  1 + (a hash of its text) mod 10; the higher score wins, equal scores tie. Swapping the answers
  swaps the verdict, so a run's swap agreement is 100 %.
- `first`: the answer shown first always wins (8 to 4), whatever it says: a judge with pure
  position bias, whose swap agreement is 0 %.

Markers in an answer change the judge's reply, so one run can meet every kind of bad reply:
`[[judge:garbage]]` (prose, no JSON), `[[judge:refuse]]` (a `refusal`), `[[judge:empty]]` (empty
content), `[[judge:outofrange]]` (a score of 42). A message without both answers gets prose.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from cascade_dev.mock.answers import Reply

__all__ = ["JUDGE_MODES", "judge_reply"]

JUDGE_MODES = ("fair", "first")
_ANSWER = {
    side: re.compile(rf"<answer_{side}>\n?(.*?)\n?</answer_{side}>", re.DOTALL)
    for side in ("a", "b")
}
_SCORE = re.compile(r"\[\[score:(\d{1,2})\]\]")
_MARKER = re.compile(r"\[\[judge:(garbage|refuse|empty|outofrange)\]\]")


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def _score(answer: str) -> int:
    found = _SCORE.search(answer)
    if found and 1 <= int(found.group(1)) <= 10:
        return int(found.group(1))
    digest = hashlib.blake2b(answer.encode(), digest_size=4).digest()
    return 1 + int.from_bytes(digest, "big") % 10


def judge_reply(messages: list[Any], mode: str) -> Reply:
    text = _last_user_text(messages)
    found = [pattern.search(text) for pattern in _ANSWER.values()]
    if found[0] is None or found[1] is None:
        return Reply(text="mock judge: I could not find two answers to compare.")
    answer_a, answer_b = found[0].group(1), found[1].group(1)
    for answer in (answer_a, answer_b):
        marker = _MARKER.search(answer)
        if marker is None:
            continue
        kind = marker.group(1)
        if kind == "garbage":
            return Reply(text="Both answers have merits; it depends on the use case.")
        if kind == "refuse":
            return Reply(text="I can't help with comparing these answers.", refusal=True)
        if kind == "empty":
            return Reply(text="")
        return Reply(text='{"score_a": 42, "score_b": 1, "winner": "A", "rationale": "x"}')
    if mode == "first":
        score_a, score_b = 8, 4
    else:
        score_a, score_b = _score(answer_a), _score(answer_b)
    winner = "A" if score_a > score_b else "B" if score_b > score_a else "tie"
    verdict = {
        "score_a": score_a,
        "score_b": score_b,
        "winner": winner,
        "rationale": f"mock {mode} judge: {score_a} against {score_b}.",
    }
    return Reply(text=orjson.dumps(verdict).decode())
