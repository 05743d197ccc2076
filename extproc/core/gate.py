"""The confidence gate: judge a cheaper tier's answer, decide whether to escalate it.

Pure: the answer's facts in, a `Verdict` out; no I/O. Each check that fires adds a `Finding`
(name, weight, a short explanation that never quotes the answer). The confidence is the product
of `1 - weight` over the findings, so one strong signal (an empty answer, weight 1) is enough and
mild ones (a hedge) add up. Then:

- confidence < `escalate_below` (default 0.70): escalate;
- confidence >= `trust_above` (default 0.85): trusted;
- in between, the `between` policy: `accept`, or `near_threshold` = escalate only when the
  classifier's own score for the request was near its threshold (`near`: a scorer step decided
  with a calibrated probability within `near_margin` below its threshold; see `is_near`).

The checks (names are the metric/decision-log `reason` values):

`finish_length`, `finish_content_filter` (finish_reason), `refusal` (`message.refusal` set),
`empty` (no content and no tool call), `refusal_phrase` / `hedge_phrase` (the shipped, editable
phrase lists; refusal phrases are looked for at the start of the answer, hedges anywhere in the
first `phrase_window` characters), `json_invalid` / `json_schema` (the request asked for
`response_format` JSON; see `extproc.core.json_subset` for the schema subset), `tool_arguments`
(a tool call's arguments are not a JSON object), `tool_undeclared` (a tool the request did not
declare), `repetition` (the answer compresses far better than text does: a degenerate loop),
`logprob_mean` / `logprob_low` (mean and a low quantile of the chosen tokens' logprobs, when the
backend returned them).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.core.json_subset import first_error
from extproc.core.keywords import KeywordMatcher

__all__ = [
    "CHECKS",
    "Answer",
    "Finding",
    "GateRequest",
    "GateSettings",
    "Verdict",
    "answer_of",
    "decide",
    "is_near",
    "judge",
    "request_of",
    "usage_of",
]

#: Every check and its default weight (how far one finding lowers the confidence).
CHECKS: dict[str, float] = {
    "finish_length": 0.5,
    "finish_content_filter": 0.6,
    "refusal": 0.7,
    "empty": 1.0,
    "refusal_phrase": 0.5,
    "hedge_phrase": 0.2,
    "json_invalid": 0.6,
    "json_schema": 0.5,
    "tool_arguments": 0.6,
    "tool_undeclared": 0.6,
    "repetition": 0.5,
    "logprob_mean": 0.4,
    "logprob_low": 0.2,
}


@dataclass(frozen=True, slots=True)
class GateSettings:
    """One tier's compiled `gate:` section (see `extproc.config.gate`)."""

    enabled: bool = True
    escalate_below: float = 0.70
    trust_above: float = 0.85
    #: "accept" or "near_threshold"
    between: str = "accept"
    near_margin: float = 0.1
    #: check name -> weight; a check with weight 0 is off
    weights: Mapping[str, float] = field(default_factory=lambda: dict(CHECKS))
    #: compiled phrase lists (case-insensitive); None: the check finds nothing
    refusal_phrases: KeywordMatcher | None = None
    hedge_phrases: KeywordMatcher | None = None
    #: characters from the start searched for refusal phrases / for hedges
    refusal_window: int = 160
    phrase_window: int = 2000
    #: repetition: the last `repetition_tail` bytes of an answer of at least that size compress
    #: (zlib, level 1) to less than `repetition_ratio` of their size
    repetition_tail: int = 768
    repetition_ratio: float = 0.10
    #: logprobs: at least this many tokens; mean below `logprob_mean_min`; the `logprob_quantile`
    #: quantile below `logprob_low_min`
    logprob_min_tokens: int = 8
    logprob_mean_min: float = -1.2
    logprob_quantile: float = 0.1
    logprob_low_min: float = -4.0
    #: ask the gated attempt's backend for logprobs when the client did not (non-streamed
    #: requests), and strip them from the answer the client gets
    request_logprobs: bool = False
    #: streamed answers are held and judged too (the per-attempt filter then sees every
    #: response chunk of the gated tier's attempts); the held prefix (tokens = content events)
    #: and its time bound
    streams: bool = True
    hold_tokens: int = 32
    hold_ms: int = 500


@dataclass(frozen=True, slots=True)
class GateRequest:
    """What the gate needs from the client's request."""

    #: "" (none), "json_object" or "json_schema"
    response_format: str = ""
    schema: Any = None
    #: names of the declared tools (function names)
    tools: frozenset[str] = frozenset()
    #: the client asked for logprobs itself
    logprobs: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """The facts of one answer (the first choice), complete or a streamed prefix."""

    content: str = ""
    refusal: str = ""
    finish_reason: str = ""
    #: (name, arguments) per tool call
    tool_calls: tuple[tuple[str, str], ...] = ()
    logprobs: tuple[float, ...] = ()
    #: False for a streamed prefix: checks that need the whole answer are skipped
    complete: bool = True


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    weight: float
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    confidence: float
    findings: tuple[Finding, ...]
    escalate: bool
    #: "trusted", "between" or "low"
    band: str

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f.check for f in self.findings)

    @property
    def reason(self) -> str:
        """The heaviest finding's check ("" when none): the one label for counters."""
        if not self.findings:
            return ""
        return max(self.findings, key=lambda f: f.weight).check


def request_of(document: Mapping[str, Any]) -> GateRequest:
    """The gate's view of a parsed chat request (anything odd reads as "not asked")."""
    kind, schema = "", None
    response_format = document.get("response_format")
    if isinstance(response_format, dict):
        declared = response_format.get("type")
        if declared in ("json_object", "json_schema"):
            kind = declared
        if declared == "json_schema":
            wrapper = response_format.get("json_schema")
            if isinstance(wrapper, dict) and isinstance(wrapper.get("schema"), dict):
                schema = wrapper["schema"]
    names: set[str] = set()
    tools = document.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                names.add(function["name"])
    return GateRequest(kind, schema, frozenset(names), document.get("logprobs") is True)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def answer_of(document: Any) -> Answer | None:
    """The first choice of a `chat.completion` object; None when it is not one."""
    if not isinstance(document, dict):
        return None
    choices = document.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        return None
    calls: list[tuple[str, str]] = []
    raw_calls = message.get("tool_calls")
    if isinstance(raw_calls, list):
        for call in raw_calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                calls.append((_text(function.get("name")), _text(function.get("arguments"))))
    return Answer(
        content=_text(message.get("content")),
        refusal=_text(message.get("refusal")),
        finish_reason=_text(choice.get("finish_reason")),
        tool_calls=tuple(calls),
        logprobs=logprobs_of(choice.get("logprobs")),
    )


def usage_of(document: Any) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens of a completion's `usage`; None where absent."""
    usage = document.get("usage") if isinstance(document, dict) else None
    if not isinstance(usage, dict):
        return None, None
    found = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
    tin, tout = (v if isinstance(v, int) and not isinstance(v, bool) else None for v in found)
    return tin, tout


def logprobs_of(value: Any) -> tuple[float, ...]:
    """The chosen tokens' logprobs of a choice's (or a chunk's) `logprobs` object."""
    if not isinstance(value, dict) or not isinstance(value.get("content"), list):
        return ()
    out = []
    for entry in value["content"]:
        if isinstance(entry, dict):
            number = entry.get("logprob")
            if isinstance(number, int | float) and not isinstance(number, bool):
                out.append(float(number))
    return tuple(out)


def _checks(settings: GateSettings, request: GateRequest, answer: Answer) -> list[Finding]:
    found: list[Finding] = []
    add = found.append
    finish = answer.finish_reason
    if finish == "length":
        add(Finding("finish_length", 0.0, "the answer was cut at the token limit"))
    elif finish == "content_filter":
        add(Finding("finish_content_filter", 0.0, "the backend's content filter stopped it"))
    if answer.refusal.strip():
        add(Finding("refusal", 0.0, "the backend set message.refusal"))
    content = answer.content
    stripped = content.strip()
    if answer.complete and not stripped and not answer.tool_calls and not answer.refusal:
        add(Finding("empty", 0.0, "no content and no tool call"))
    if stripped:
        _phrases(settings, stripped, add)
        if answer.complete:
            _structure(request, stripped, add)
            _repetition(settings, content, add)
    for name, arguments in answer.tool_calls if answer.complete else ():
        if request.tools and name not in request.tools:
            add(
                Finding(
                    "tool_undeclared", 0.0, "a tool call names a tool the request did not declare"
                )
            )
        try:
            parsed = orjson.loads(arguments) if arguments else {}
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            add(Finding("tool_arguments", 0.0, "tool-call arguments are not a JSON object"))
    _logprobs(settings, answer.logprobs, add)
    return found


def _phrases(settings: GateSettings, stripped: str, add: Any) -> None:
    refusal, hedge = settings.refusal_phrases, settings.hedge_phrases
    if refusal is not None:
        head = stripped[: settings.refusal_window]
        if refusal.search(head, head.encode("utf-8", "surrogatepass")):
            add(Finding("refusal_phrase", 0.0, "a refusal phrase opens the answer"))
    if hedge is not None:
        window = stripped[: settings.phrase_window]
        if hedge.search(window, window.encode("utf-8", "surrogatepass")):
            add(Finding("hedge_phrase", 0.0, "a hedging phrase"))


def _structure(request: GateRequest, stripped: str, add: Any) -> None:
    if not request.response_format:
        return
    text = stripped
    if text.startswith("```"):  # a fenced block is a common, harmless wrapper
        text = text.strip("`").removeprefix("json").strip()
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        add(Finding("json_invalid", 0.0, "response_format asked for JSON; the answer is not JSON"))
        return
    if request.response_format == "json_object" and not isinstance(parsed, dict):
        add(Finding("json_invalid", 0.0, "response_format json_object; the answer is no object"))
    elif request.schema is not None:
        error = first_error(parsed, request.schema)
        if error:
            add(Finding("json_schema", 0.0, f"violates the response schema at {error[:80]}"))


def _repetition(settings: GateSettings, content: str, add: Any) -> None:
    size = settings.repetition_tail
    if len(content) * 4 < size:  # fewer bytes than the tail, whatever the script
        return
    raw = content[-size:].encode("utf-8", "surrogatepass")[-size:]
    if len(raw) < size:
        return
    ratio = len(zlib.compress(raw, 1)) / size
    if ratio < settings.repetition_ratio:
        add(Finding("repetition", 0.0, f"degenerate repetition (compresses to {ratio:.2f})"))


def _logprobs(settings: GateSettings, values: Sequence[float], add: Any) -> None:
    count = len(values)
    if count < settings.logprob_min_tokens:
        return
    mean = math.fsum(values) / count
    if mean < settings.logprob_mean_min:
        add(Finding("logprob_mean", 0.0, f"mean token logprob {mean:.2f}"))
    ordered = sorted(values)
    low = ordered[min(count - 1, int(settings.logprob_quantile * count))]
    if low < settings.logprob_low_min:
        add(Finding("logprob_low", 0.0, f"{settings.logprob_quantile:g} quantile {low:.2f}"))


def is_near(score: float | None, threshold: float | None, margin: float) -> bool:
    """The classifier's probability that the tier is not enough was within `margin` of its
    threshold (False for rule decisions, which have no score)."""
    if score is None or threshold is None:
        return False
    return score >= threshold - margin


def judge(
    settings: GateSettings, request: GateRequest, answer: Answer, near: bool = False
) -> Verdict:
    """Run every enabled check and decide. `near`: see `is_near`."""
    weights = settings.weights
    findings = tuple(
        Finding(f.check, weight, f.detail)
        for f in _checks(settings, request, answer)
        if (weight := weights.get(f.check, 0.0)) > 0.0
    )
    confidence = 1.0
    for finding in findings:
        confidence *= 1.0 - min(1.0, finding.weight)
    confidence = round(confidence, 3)
    escalate, band = decide(settings, confidence, near)
    return Verdict(confidence, findings, escalate, band)


def decide(settings: GateSettings, confidence: float, near: bool = False) -> tuple[bool, str]:
    """(escalate, band) for a confidence."""
    if confidence < settings.escalate_below:
        return True, "low"
    if confidence >= settings.trust_above:
        return False, "trusted"
    return settings.between == "near_threshold" and near, "between"
