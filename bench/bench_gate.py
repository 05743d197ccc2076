"""Confidence-gate CPU per answer: parse a ~2 KB `chat.completion` body and judge it.

What the per-attempt role does for every held answer on a gated tier: `orjson.loads` of the
response body, `answer_of`, then every check with the shipped phrase lists (`judge`). Cases: a
passing English answer; a mixed English / Korean / Chinese one; a JSON answer validated against a
schema; an answer with logprobs of every token (~500 tokens); a degenerate loop that escalates.

    .venv/bin/python bench/bench_gate.py [--repeat 20000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import timeit

import orjson

from extproc.config.snapshot import DEFAULT_CONFIG, compile_config
from extproc.core.gate import GateRequest, answer_of, judge, request_of

WORDS = (
    "the of and to in is for that with on as by this be are from at or an it not which can has "
    "have was more value step compute compare array index result function search middle sorted "
    "interval target half element returns time logarithmic binary keep each"
).split()
KOREAN = "이 함수는 정렬된 배열에서 로그 시간에 실행됩니다 그리고 결과를 반환합니다".split()
CHINESE = list("该函数在排序数组上以对数时间运行并返回结果的索引值")


def prose(seed: int, mixed: bool = False) -> str:
    """Seeded, non-repeating text (a repeated paragraph would rightly look degenerate)."""
    rng = random.Random(seed)
    if not mixed:
        return " ".join(rng.choice(WORDS) for _ in range(800)) + "."
    parts = []
    for _ in range(300):
        pick = rng.random()
        if pick < 0.5:
            parts.append(rng.choice(WORDS))
        elif pick < 0.75:
            parts.append(rng.choice(KOREAN))
        else:
            parts.append("".join(rng.choice(CHINESE) for _ in range(3)))
    return " ".join(parts)


SCHEMA = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "score": {"type": "number"}},
                "required": ["name", "score"],
            },
        }
    },
    "required": ["items"],
}


def completion(content: str, logprobs: bool = False) -> bytes:
    choice: dict[str, object] = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": "stop",
        "logprobs": None,
    }
    if logprobs:
        pieces = [content[i : i + 4] for i in range(0, len(content), 4)]
        choice["logprobs"] = {
            "content": [{"token": p, "logprob": -0.05, "top_logprobs": []} for p in pieces]
        }
    return orjson.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [choice]})


def sized(unit: str, size: int) -> str:
    """`unit` repeated or cut to about `size` UTF-8 bytes."""
    text = unit
    while len(text.encode()) < size:
        text += unit
    while len(text.encode()) > size:
        text = text[: len(text) - max(1, (len(text.encode()) - size) // 3)]
    return text


def cases() -> list[tuple[str, bytes, GateRequest]]:
    rows = [{"name": f"item {i}", "score": i / 7} for i in range(40)]
    json_text = orjson.dumps({"items": rows}).decode()
    schema_request = request_of(
        {"response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}
    )
    return [
        ("English prose, 2 KB", completion(sized(prose(1), 1900)), GateRequest()),
        ("mixed en/ko/zh, 2 KB", completion(sized(prose(2, True), 1900)), GateRequest()),
        (
            "JSON + schema, 2 KB",
            completion(json_text[:1900].rsplit("},", 1)[0] + "}]}"),
            schema_request,
        ),
        ("prose + logprobs (content 2 KB)", completion(sized(prose(3), 1900), True), GateRequest()),
        ("degenerate loop, 2 KB", completion(sized("the same line again. ", 1900)), GateRequest()),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20000, help="measurements per case")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, cases interleaved")
    args = parser.parse_args()
    weak = "  - name: weak\n    model: qwen3-4b\n"
    text = DEFAULT_CONFIG.read_text().replace(weak, weak + "    gate: {}\n")
    settings = compile_config(text).gates.tiers["weak"].settings  # the shipped phrase lists
    calibration = min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6
    print(f"calibration: sum(range(1000)) = {calibration:.1f} µs on this machine now")
    print("(machine noise: the best round's median is the figure to compare)\n")
    print("| answer | body bytes | best round median | median | p99 | escalates |")
    print("|---|---:|---:|---:|---:|---|")
    per_round = max(1, args.repeat // args.rounds)
    samples: dict[str, list[int]] = {}
    medians: dict[str, list[float]] = {}
    verdicts: dict[str, bool] = {}
    for _ in range(args.rounds):
        for name, body, request in cases():
            chunk = []
            for _ in range(per_round):
                start = time.perf_counter_ns()
                answer = answer_of(orjson.loads(body))
                assert answer is not None
                verdicts[name] = judge(settings, request, answer).escalate
                chunk.append(time.perf_counter_ns() - start)
            samples.setdefault(name, []).extend(chunk)
            medians.setdefault(name, []).append(statistics.median(chunk) / 1000)
    for name, body, _request in cases():
        values = sorted(samples[name])
        p99 = values[int(len(values) * 0.99)] / 1000
        print(
            f"| {name} | {len(body)} | {min(medians[name]):.1f} µs | "
            f"{statistics.median(values) / 1000:.1f} µs | {p99:.1f} µs | {verdicts[name]} |"
        )


if __name__ == "__main__":
    main()
