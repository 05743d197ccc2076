"""The pairwise judge's prompt: a rubric template filled with one request and two answers.

The judge never learns which tier wrote which answer: the answers are called A and B, their
order is chosen per pair (`judge_pairs.order_for`), and nothing else of the pair (models, tiers,
latencies) goes into the prompt.

A rubric is a template for the user message with the placeholders `{request}`, `{answer_a}`,
`{answer_b}` (all three required) and `{language_note}` (optional). Placeholders are replaced
literally (no `str.format`), so a template may contain JSON examples with braces. The shipped
default is for coding assistants; `cascade judge --rubric FILE` replaces it.

Answers cannot close their own section: a literal `</answer_a>` (or any tag the template uses
around the inserted texts) inside an answer or the request is defused before insertion, so an
answer cannot pose as the other answer or as an instruction after the sections.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extproc.tuning.lang import HAN, HANGUL, KANA
from extproc.tuning.segments import dominant_script

PLACEHOLDERS = ("{request}", "{answer_a}", "{answer_b}")
LANGUAGE_PLACEHOLDER = "{language_note}"
#: Characters kept of the request and of each answer (the rest is cut, with a marker).
DEFAULT_MAX_CHARS = 12_000

SYSTEM_PROMPT = (
    "You are an impartial reviewer comparing two answers from AI assistants. You do not know "
    "which systems wrote them. Follow the rubric and reply with one JSON object only."
)

DEFAULT_RUBRIC = """\
A user sent the request below to a coding assistant. Two assistants answered it. Decide which \
answer serves the user better, or whether they are equally good.

Judge, in this order of weight:
1. Correctness: the code runs and does what was asked; facts, APIs and commands are real; no bug \
is introduced. A wrong answer loses to a correct one however well it is written.
2. Completeness: every part of the request is addressed; constraints given by the user are kept.
3. Usefulness: the answer is focused, explains what the user needs to know, and is safe to apply.
Do not reward length, confident tone or formatting for its own sake. The order in which the \
answers are shown says nothing about their quality.
{language_note}
<request>
{request}
</request>

<answer_a>
{answer_a}
</answer_a>

<answer_b>
{answer_b}
</answer_b>

Reply with only this JSON object, no other text:
{"score_a": <integer 1-10>, "score_b": <integer 1-10>, "winner": "A" or "B" or "tie", \
"rationale": "<at most two sentences, in English>"}
"""

_LANGUAGE_NAMES = {HANGUL: "Korean", HAN: "Chinese", KANA: "Japanese"}
_TAG = re.compile(r"</?([A-Za-z_][A-Za-z0-9_-]*)>")


@dataclass(frozen=True, slots=True)
class Rubric:
    """A checked rubric template; `name` says where it came from (for the summary)."""

    template: str
    name: str = "default (coding assistant)"
    system: str = SYSTEM_PROMPT
    max_chars: int = DEFAULT_MAX_CHARS

    def __post_init__(self) -> None:
        missing = [p for p in PLACEHOLDERS if p not in self.template]
        if missing:
            raise ValueError(f"rubric {self.name} lacks the placeholder(s) {', '.join(missing)}")
        if self.max_chars < 100:
            raise ValueError("max_chars must be at least 100")

    @property
    def tags(self) -> frozenset[str]:
        """Tag names the template uses (`request`, `answer_a`, ...): defused in inserted text."""
        return frozenset(m.group(1).lower() for m in _TAG.finditer(self.template))


DEFAULT = Rubric(DEFAULT_RUBRIC)


def language_note(request: str) -> str:
    """A line telling the judge the request's language, for Korean, Chinese and Japanese."""
    name = _LANGUAGE_NAMES.get(dominant_script(request))
    if name is None:
        return ""
    return (
        f"\nThe request is written in {name}. An answer that replies in {name} (code, "
        f"identifiers and technical terms may stay in English) serves the user better than one "
        f"in another language; judge the content in {name} as carefully as English. Write the "
        "rationale in English.\n"
    )


def render_request(messages: Sequence[Mapping[str, Any]]) -> str:
    """The conversation as the judge sees it: the last user message plainly, earlier turns
    (and a system prompt) labelled by role before it."""
    texts = [(str(m.get("role", "user")), _content_text(m.get("content"))) for m in messages]
    texts = [(role, text) for role, text in texts if text]
    if len(texts) == 1 and texts[0][0] == "user":
        return texts[0][1]
    return "\n\n".join(f"[{role}]\n{text}" for role, text in texts)


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters not shown]"


def _defuse(text: str, tags: frozenset[str]) -> str:
    """`<answer_a>` -> `<\u200banswer_a>` for the template's own tags (zero-width space)."""

    def fix(match: re.Match[str]) -> str:
        if match.group(1).lower() not in tags:
            return match.group()
        slash = "/" if match.group().startswith("</") else ""
        return f"<{slash}\u200b{match.group(1)}>"

    return _TAG.sub(fix, text)


def build_messages(
    rubric: Rubric, messages: Sequence[Mapping[str, Any]], answer_a: str, answer_b: str
) -> list[dict[str, str]]:
    """The chat messages sent to the judge for one ordering of one pair."""
    request = render_request(messages)
    tags = rubric.tags
    fill = {
        "{request}": _defuse(_cut(request, rubric.max_chars), tags),
        "{answer_a}": _defuse(_cut(answer_a, rubric.max_chars), tags),
        "{answer_b}": _defuse(_cut(answer_b, rubric.max_chars), tags),
        LANGUAGE_PLACEHOLDER: language_note(request),
    }
    # one pass, so a placeholder inside an inserted text is never expanded
    pattern = re.compile("|".join(re.escape(key) for key in fill))
    user = pattern.sub(lambda m: fill[m.group()], rubric.template)
    return [{"role": "system", "content": rubric.system}, {"role": "user", "content": user}]
