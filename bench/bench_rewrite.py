"""What `server.rewrite_model` (on by default) adds to the classifier's hot path.

Per request the classifier parses the body and classifies it either way; with the rewrite it
also writes the body again with the decided tier's model (`RequestProcessor._rewrite_model`:
a shallow copy of the parsed document, `orjson.dumps`). Bodies of `bench_classify.py` (mixed
English / Korean / Chinese), whose `model` ("auto") differs from every tier's, so every
request is rewritten.

    .venv/bin/python bench/bench_rewrite.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import orjson
from bench_classify import make_body

from extproc.config.snapshot import DEFAULT_CONFIG, load_snapshot
from extproc.core.chat import ChatRequest, parse_chat
from extproc.core.classify import classify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    snapshot = load_snapshot(DEFAULT_CONFIG)
    assert snapshot.server.rewrite_model
    v7 = snapshot.classifiers["v7"]

    def decide(body: bytes) -> tuple[ChatRequest, str]:
        chat = parse_chat(body)
        assert isinstance(chat, ChatRequest)
        return chat, classify(chat, v7).tier

    def without(body: bytes) -> object:
        return decide(body)

    def with_rewrite(body: bytes) -> object:
        chat, tier = decide(body)
        model = snapshot.tier(tier).model
        assert chat.model != model
        document = dict(chat.document)  # what the processor does (processor.py)
        document["model"] = model
        return orjson.dumps(document)

    def medians_us(body: bytes) -> tuple[float, float]:
        """Both paths timed in alternation, so load on the machine hits them alike."""
        base, rewritten = [], []
        for _ in range(args.repeat):
            for function, samples in ((without, base), (with_rewrite, rewritten)):
                started = time.perf_counter()
                function(body)
                samples.append(time.perf_counter() - started)
        return statistics.median(base) * 1e6, statistics.median(rewritten) * 1e6

    print("| body | parse + classify (median) | + rewrite (median) | rewrite adds |")
    print("|---|---:|---:|---:|")
    for size in (4096, 16384, 262144):
        base, rewritten = medians_us(make_body(size))
        added = rewritten - base
        print(f"| {size // 1024} KB | {base:.1f} µs | {rewritten:.1f} µs | {added:.1f} µs |")


if __name__ == "__main__":
    main()
