"""Hot-path benchmark: JSON parse + text extraction + v7 classification of a chat body.

Compares the project's path (orjson, UTF-8 bytes lower-casing, one Aho–Corasick pass) with the
naive one (`json.loads`, `str.lower()`, one substring scan per keyword) in the same run.

    .venv/bin/python bench/bench_classify.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import orjson

from extproc.config.snapshot import DEFAULT_CONFIG, load_snapshot
from extproc.core.chat import ChatRequest, chat_from_document, parse_chat
from extproc.core.classify import classify, select_text

# Mixed English / Korean / Chinese prose without v7 keywords, so every keyword is searched for
# across the whole text (the worst case for the keyword rule).
FILLER = (
    "Please look at the function below and tell me what it returns for empty input. "
    "이 함수가 빈 입력에 대해 무엇을 반환하는지 알려주세요. "
    "请告诉我这个函数在输入为空时返回什么。 "
)


def make_body(size: int) -> bytes:
    messages = [{"role": "system", "content": "You are a helpful coding assistant."}]
    turn = 0
    while len(orjson.dumps({"model": "auto", "messages": messages})) < size:
        role = "user" if turn % 2 == 0 else "assistant"
        messages.append({"role": role, "content": FILLER * 3})
        turn += 1
    body = orjson.dumps({"model": "auto", "messages": messages[:6]})
    # pad the last message to the exact size
    missing = size - len(body)
    if missing > 0:
        messages[5]["content"] += "x" * missing
        body = orjson.dumps({"model": "auto", "messages": messages[:6]})
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    snapshot = load_snapshot(DEFAULT_CONFIG)
    v7 = snapshot.classifiers["v7"]
    assert v7.rules[0].matcher is not None
    keywords = v7.rules[0].matcher.keywords

    def fast(body: bytes) -> object:
        chat = parse_chat(body)
        assert isinstance(chat, ChatRequest)
        return classify(chat, v7)

    def naive(body: bytes) -> object:
        chat = chat_from_document(json.loads(body))
        assert isinstance(chat, ChatRequest)
        text = select_text(chat.messages, v7.text)
        low = text.lower()
        found = [k for k in keywords if k in low]
        if found:
            return ("strong", found)
        return ("strong" if len(text) > 500 or len(chat.messages) > 5 else "weak", found)

    print(f"{'body':>6} {'ours median µs':>15} {'naive median µs':>16} {'speed-up':>9}")
    for size in (4096, 16384):
        body = make_body(size)
        ours = measure(fast, body, args.repeat)
        base = measure(naive, body, args.repeat)
        print(f"{len(body) // 1024:>4}KB {ours:>15.1f} {base:>16.1f} {base / ours:>8.1f}x")


def measure(
    func: Callable[[bytes], object],
    body: bytes,
    repeat: int,
    timer: Callable[[], int] = time.perf_counter_ns,
    stat: Callable[[list[float]], float] = statistics.median,
) -> float:
    """Median µs per call over batches of 20 (`timer`: wall clock, or `time.thread_time_ns`;
    `stat`: another statistic of the batches, such as `min`)."""
    for _ in range(200):
        func(body)
    samples = []
    batch = 20
    for _ in range(max(1, repeat // batch)):
        start = timer()
        for _ in range(batch):
            func(body)
        samples.append((timer() - start) / batch / 1000)
    return stat(samples)


if __name__ == "__main__":
    main()
