"""The confidence gate's pure core: each check fires exactly when it should."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc.core import gate
from extproc.core.gate import Answer, GateRequest, GateSettings, answer_of, judge, request_of
from extproc.core.gate_stream import StreamPrefix, with_logprobs, without_logprobs
from extproc.core.json_subset import first_error
from extproc.core.keywords import KeywordMatcher

PHRASES = yaml.safe_load(
    (Path(gate.__file__).parent.parent / "defaults" / "gate_phrases.yaml").read_text("utf-8")
)
SETTINGS = GateSettings(
    refusal_phrases=KeywordMatcher(PHRASES["refusal"]),
    hedge_phrases=KeywordMatcher(PHRASES["hedge"]),
)
PLAIN = GateRequest()
GOOD = (
    "Binary search halves the interval each step: compare the middle element with the target, "
    "then keep the half that can still hold it. It runs in O(log n) time on a sorted array."
)


def verdict(answer: Answer, request: GateRequest = PLAIN, **changes: Any) -> gate.Verdict:
    settings = dataclasses.replace(SETTINGS, **changes)
    return judge(settings, request, answer)


def test_a_plain_good_answer_is_trusted() -> None:
    result = verdict(Answer(content=GOOD, finish_reason="stop"))
    assert result.confidence == 1.0
    assert result.findings == ()
    assert (result.escalate, result.band) == (False, "trusted")


@pytest.mark.parametrize(
    ("finish", "check"), [("length", "finish_length"), ("content_filter", "finish_content_filter")]
)
def test_finish_reasons_escalate(finish: str, check: str) -> None:
    result = verdict(Answer(content=GOOD, finish_reason=finish))
    assert result.reasons == (check,)
    assert result.escalate
    assert result.confidence == round(1 - gate.CHECKS[check], 3)


def test_tool_calls_finish_is_not_a_finding() -> None:
    answer = Answer(finish_reason="tool_calls", tool_calls=(("lookup", '{"q": 1}'),))
    assert verdict(answer, GateRequest(tools=frozenset({"lookup"}))).findings == ()


def test_message_refusal_escalates() -> None:
    result = verdict(Answer(refusal="I can't do that.", finish_reason="stop"))
    assert result.reasons == ("refusal",)
    assert result.escalate


@pytest.mark.parametrize("content", ["", "   \n\t "])
def test_empty_content_escalates_with_zero_confidence(content: str) -> None:
    result = verdict(Answer(content=content, finish_reason="stop"))
    assert result.reasons == ("empty",)
    assert result.confidence == 0.0
    assert result.escalate


@pytest.mark.parametrize(
    "opening",
    [
        "I'm sorry, but I can't help with that request.",
        "죄송하지만 그 요청은 도와드릴 수 없습니다.",
        "抱歉，我无法帮助您完成这个请求。",
    ],
)
def test_refusal_phrases_in_three_languages(opening: str) -> None:
    result = verdict(Answer(content=opening + " " + GOOD, finish_reason="stop"))
    assert result.reasons == ("refusal_phrase",)
    assert result.escalate  # 0.5 < 0.70


def test_a_refusal_phrase_late_in_the_answer_is_not_a_refusal() -> None:
    text = GOOD + " Some tools say 'I can't help with that' when misconfigured."
    assert verdict(Answer(content=text, finish_reason="stop")).findings == ()


@pytest.mark.parametrize("hedge", ["I'm not sure, but", "잘 모르겠지만,", "我不确定，但是"])
def test_a_hedge_alone_lands_between_and_is_accepted(hedge: str) -> None:
    result = verdict(Answer(content=hedge + " " + GOOD, finish_reason="stop"))
    assert result.reasons == ("hedge_phrase",)
    assert result.band == "between"
    assert not result.escalate


def test_near_threshold_policy_escalates_between_only_when_the_score_was_close() -> None:
    settings = dataclasses.replace(SETTINGS, between="near_threshold")
    answer = Answer(content="I'm not sure, but " + GOOD, finish_reason="stop")
    assert judge(settings, PLAIN, answer, near=True).escalate
    assert not judge(settings, PLAIN, answer, near=False).escalate
    assert not judge(SETTINGS, PLAIN, answer, near=True).escalate  # policy accept


def test_is_near() -> None:
    assert gate.is_near(0.45, 0.5, 0.1)
    assert not gate.is_near(0.30, 0.5, 0.1)
    assert not gate.is_near(None, None, 0.1)  # a rule decided: no score


def test_findings_compound() -> None:
    # a hedge (0.2) and a low logprob quantile (0.2): 0.8 * 0.8 = 0.64 < 0.70
    logprobs = (-0.1,) * 17 + (-6.0,) * 3
    result = verdict(
        Answer(content="I'm not sure. " + GOOD, finish_reason="stop", logprobs=logprobs)
    )
    assert set(result.reasons) == {"hedge_phrase", "logprob_low"}
    assert result.confidence == pytest.approx(0.64)
    assert result.escalate


JSON_OBJECT = GateRequest(response_format="json_object")


@pytest.mark.parametrize(
    ("content", "fires"),
    [('{"a": 1}', False), ('```json\n{"a": 1}\n```', False), ("[1, 2]", True), ("{a: 1}", True)],
)
def test_json_object_response_format(content: str, fires: bool) -> None:
    result = verdict(Answer(content=content, finish_reason="stop"), JSON_OBJECT)
    assert result.reasons == (("json_invalid",) if fires else ())
    assert result.escalate is fires


def test_json_is_not_checked_when_not_asked() -> None:
    assert verdict(Answer(content="{a: 1}", finish_reason="stop")).findings == ()


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ({"name": "x", "age": 3, "tags": ["a"]}, ""),
        ({"name": "x"}, "$: missing age"),
        ({"name": "x", "age": 1.5}, "$.age: not integer"),
        ({"name": "x", "age": -1}, "$.age: value below minimum 0"),
        ({"name": "", "age": 1}, "$.name: length below minLength 1"),
        ({"name": "x", "age": 1, "tags": ["c"]}, "$.tags[0]: not in enum"),
        ({"name": "x", "age": 1, "tags": ["a", "b", "a"]}, "$.tags: items above maxItems 2"),
        ({"name": "x", "age": 1, "extra": 1}, "$: unexpected extra"),
        ({"name": "x", "age": True}, "$.age: not integer"),
    ],
)
def test_schema_subset(document: Any, error: str) -> None:
    assert first_error(document, SCHEMA) == error


def test_schema_refs_and_any_of() -> None:
    schema = {
        "$defs": {"id": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]}},
        "type": "object",
        "properties": {"id": {"$ref": "#/$defs/id"}},
    }
    assert first_error({"id": 5}, schema) == ""
    assert first_error({"id": "abc"}, schema) == ""
    assert first_error({"id": "abcd"}, schema) == "$.id: matches no branch of anyOf"
    assert first_error({"id": 1}, {"unknownKeyword": 1}) == ""  # not judged: valid


def test_a_recursive_schema_is_bounded() -> None:
    schema = {
        "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
        "$ref": "#/$defs/n",
    }
    chain: dict[str, object] = {}
    for _ in range(60):
        chain = {"next": chain}
    assert first_error(chain, schema) == ""  # deeper than MAX_DEPTH: not judged
    assert first_error({"next": {"next": 3}}, schema) == "$.next.next: not object"


def test_json_schema_response_format_escalates_on_violation() -> None:
    request = request_of(
        {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}}
    )
    assert request.response_format == "json_schema"
    ok = verdict(Answer(content='{"name": "x", "age": 3}', finish_reason="stop"), request)
    bad = verdict(Answer(content='{"name": "x"}', finish_reason="stop"), request)
    assert ok.findings == ()
    assert bad.reasons == ("json_schema",)
    assert bad.escalate
    assert "missing age" in bad.findings[0].detail


TOOLS = request_of({"tools": [{"type": "function", "function": {"name": "lookup"}}]})


@pytest.mark.parametrize(
    ("calls", "reasons"),
    [
        ((("lookup", '{"q": "x"}'),), ()),
        ((("lookup", ""),), ()),
        ((("lookup", '{"q": '),), ("tool_arguments",)),
        ((("lookup", "[1]"),), ("tool_arguments",)),
        ((("delete_all", "{}"),), ("tool_undeclared",)),
    ],
)
def test_tool_calls(calls: tuple[tuple[str, str], ...], reasons: tuple[str, ...]) -> None:
    result = verdict(Answer(finish_reason="tool_calls", tool_calls=calls), TOOLS)
    assert result.reasons == reasons
    assert result.escalate is bool(reasons)


def test_degenerate_repetition_escalates_and_ordinary_text_does_not() -> None:
    loop = "The answer is the answer. " * 60
    assert verdict(Answer(content=loop, finish_reason="stop")).reasons == ("repetition",)
    prose = " ".join(
        f"Step {i}: compute the value {i * i} and compare with {i + 7}." for i in range(40)
    )
    assert verdict(Answer(content=prose, finish_reason="stop")).findings == ()
    assert verdict(Answer(content="ok " * 50, finish_reason="stop")).findings == ()  # too short


def test_logprobs_mean_and_low_quantile() -> None:
    confident = tuple(-0.05 for _ in range(40))
    unsure = tuple(-2.0 for _ in range(40))
    assert verdict(Answer(content=GOOD, finish_reason="stop", logprobs=confident)).findings == ()
    low = verdict(Answer(content=GOOD, finish_reason="stop", logprobs=unsure))
    assert low.reasons == ("logprob_mean",)
    few = verdict(Answer(content=GOOD, finish_reason="stop", logprobs=(-9.0,) * 3))
    assert few.findings == ()  # fewer than logprob_min_tokens: no judgement


def test_a_weight_of_zero_turns_a_check_off() -> None:
    weights = {**gate.CHECKS, "finish_length": 0.0}
    result = verdict(Answer(content=GOOD, finish_reason="length"), weights=weights)
    assert result.findings == ()
    assert not result.escalate


def test_thresholds_are_settings() -> None:
    answer = Answer(content=GOOD, finish_reason="length")  # confidence 0.5
    assert not verdict(answer, escalate_below=0.4, trust_above=0.45).escalate


def test_a_streamed_prefix_skips_checks_that_need_the_whole_answer() -> None:
    prefix = Answer(content='{"name": ', complete=False)
    assert verdict(prefix, JSON_OBJECT).findings == ()
    assert verdict(Answer(content="", complete=False)).findings == ()
    refusing = Answer(content="I'm sorry, but I can't help with", complete=False)
    assert verdict(refusing).reasons == ("refusal_phrase",)


def test_answer_of_a_completion_object() -> None:
    document = orjson.loads(
        orjson.dumps(
            {
                "choices": [
                    {
                        "message": {
                            "content": "hi",
                            "refusal": None,
                            "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                        },
                        "finish_reason": "stop",
                        "logprobs": {"content": [{"logprob": -0.5}, {"logprob": math.log(0.5)}]},
                    }
                ]
            }
        )
    )
    answer = answer_of(document)
    assert answer is not None
    assert (answer.content, answer.refusal, answer.finish_reason) == ("hi", "", "stop")
    assert answer.tool_calls == (("f", "{}"),)
    assert answer.logprobs == pytest.approx((-0.5, math.log(0.5)))
    assert answer_of({"error": {}}) is None
    assert answer_of([1]) is None


def test_the_explanations_never_quote_the_answer() -> None:
    secret = "hunter2-secret"
    answer = Answer(content="I can't help with " + secret + " " * 3, finish_reason="length")
    assert all(secret not in f.detail for f in verdict(answer).findings)


def test_reason_is_the_heaviest_finding() -> None:
    result = verdict(Answer(content="I'm not sure. " + GOOD, finish_reason="length"))
    assert result.reason == "finish_length"


def sse(*events: object) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def delta(**fields: object) -> dict[str, object]:
    finish = fields.pop("finish", None)
    logprobs = fields.pop("logprobs", None)
    return {
        "choices": [{"index": 0, "delta": fields, "finish_reason": finish, "logprobs": logprobs}]
    }


def test_a_stream_prefix_read_from_chunks_cut_anywhere() -> None:
    raw = sse(
        delta(role="assistant", content=""),
        delta(content="I'm sorry, ", logprobs={"content": [{"logprob": -0.5}]}),
        delta(content="but I can't help"),
        delta(tool_calls=[{"index": 0, "function": {"name": "look", "arguments": '{"q"'}}]),
        delta(tool_calls=[{"index": 0, "function": {"name": "up", "arguments": ": 1}"}}]),
        delta(finish="length"),
    )
    prefix = StreamPrefix()
    for start in range(0, len(raw), 7):  # 7-byte pieces: events split across chunks
        prefix.feed(raw[start : start + 7])
    assert prefix.done
    assert prefix.tokens == 2
    answer = prefix.answer(complete=True)
    assert answer.content == "I'm sorry, but I can't help"
    assert answer.finish_reason == "length"
    assert answer.tool_calls == (("lookup", '{"q": 1}'),)
    assert answer.logprobs == (-0.5,)
    assert set(judge(SETTINGS, PLAIN, answer).reasons) == {"finish_length", "refusal_phrase"}


def test_a_stream_prefix_reads_refusal_deltas_and_ignores_junk() -> None:
    prefix = StreamPrefix()
    prefix.feed(b"data: not json\n\n: a comment\n\n" + sse(delta(refusal="No.")))
    answer = prefix.answer(complete=False)
    assert answer.refusal == "No."
    assert judge(SETTINGS, PLAIN, answer).reasons == ("refusal",)


def test_logprobs_asked_for_and_stripped() -> None:
    asked = with_logprobs(b'{"model": "m", "messages": []}')
    assert asked is not None and orjson.loads(asked)["logprobs"] is True
    assert with_logprobs(b'{"logprobs": true}') is None  # asked already
    assert with_logprobs(b"[1]") is None
    answer = {"choices": [{"message": {"content": "x"}, "logprobs": {"content": []}}], "id": "a"}
    stripped = without_logprobs(answer)
    assert stripped is not None
    assert orjson.loads(stripped) == {
        "choices": [{"message": {"content": "x"}, "logprobs": None}],
        "id": "a",
    }
    assert without_logprobs({"choices": [{"logprobs": None}]}) is None  # nothing to strip
