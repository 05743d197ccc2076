"""Response-cache quality and cost, with the server's own code (extproc.routing.cache).

Quality, on the labelled dev questions in ../shared/data (GSM8K maths, MMLU multiple choice),
each file on its own (nothing here is tuned; the threshold is the shipped default):

- must-not-hit set: every question stored, then asked again with one change that changes the
  right answer: a number (+1), a number word (three -> four), a negation inserted, two options
  swapped, a superlative flipped (largest -> smallest). Any hit is a false hit.
- paraphrase set: every question asked again reworded by rules that keep its meaning (spacing
  and case, a polite wrapper, two premises in the other order, synonyms). Hits wanted.

Cost: the lookup of a miss (exact key; exact + semantic) with 10,000 stored entries, all in one
semantic bucket (single-turn questions with the same parameters: the worst case).

    .venv/bin/python bench/bench_cache.py [--data ../shared/data] [--seed 7]

The gateway figures (hit latency through Envoy, throughput with the cache on at a 0 % hit rate)
come from `bench/bench_cache_gateway.py`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from extproc.config.snapshot import DEFAULT_CONFIG, compile_config
from extproc.core.chat import ChatRequest, chat_from_document
from extproc.routing.cache import lookup, store_answer
from extproc.routing.cache_store import CacheStore

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
FILES = ("gsm8k_dev_gpt4_vs_mixtral.jsonl", "mmlu_dev_gpt4_vs_mixtral.jsonl")
USER = {"x-user-id": "bench", ":path": "/v1/chat/completions"}
ANSWER = json.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "42"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1},
    }
).encode()

NUMBER_WORDS = {
    "two": "three",
    "three": "four",
    "four": "five",
    "five": "six",
    "six": "seven",
    "seven": "eight",
    "eight": "nine",
    "nine": "ten",
    "ten": "eleven",
    "twice": "three times",
    "half": "a third",
}
SUPERLATIVES = {
    "largest": "smallest",
    "smallest": "largest",
    "most": "least",
    "least": "most",
    "maximum": "minimum",
    "minimum": "maximum",
    "highest": "lowest",
    "lowest": "highest",
    "best": "worst",
    "true": "false",
    "false": "true",
}
SYNONYMS = {
    "calculate": "compute",
    "determine": "find",
    "purchase": "buy",
    "buys": "purchases",
    "total": "overall",
    "gets": "receives",
    "quickly": "fast",
    "begins": "starts",
    "store": "shop",
    "large": "big",
    "small": "little",
    "following": "below",
    "statement": "claim",
    "approximately": "about",
    "each": "every",
    "daily": "every day",
}
AUXILIARIES = re.compile(r"\b(is|are|was|were|does|do|did|can|will|should|would|has|have)\b")


def questions(path: Path) -> list[str]:
    texts = []
    with path.open() as lines:
        for line in lines:
            record = json.loads(line)
            texts.append(record["messages"][-1]["content"])
    return texts


def chat(text: str, stream: bool = False) -> ChatRequest:
    document = {"model": "auto", "messages": [{"role": "user", "content": text}], "temperature": 0}
    if stream:
        document["stream"] = True
    parsed = chat_from_document(document)
    assert isinstance(parsed, ChatRequest)
    return parsed


def must_not_hit(text: str) -> Iterator[tuple[str, str]]:
    """(kind, variant) pairs whose right answer differs from the original's."""
    number = re.search(r"\d+", text)
    if number:
        value = str(int(number.group()) + 1)
        yield "number", text[: number.start()] + value + text[number.end() :]
    for word, other in NUMBER_WORDS.items():
        found = re.search(rf"\b{word}\b", text)
        if found:
            yield "number word", text[: found.start()] + other + text[found.end() :]
            break
    auxiliary = AUXILIARIES.search(text)
    if auxiliary:
        yield "negation", text[: auxiliary.end()] + " not" + text[auxiliary.end() :]
    options = re.search(r"^A\. (.*)$\n^B\. (.*)$", text, re.MULTILINE)
    if options and options.group(1) != options.group(2):
        swapped = f"A. {options.group(2)}\nB. {options.group(1)}"
        yield "options swapped", text[: options.start()] + swapped + text[options.end() :]
    for word, other in SUPERLATIVES.items():
        found = re.search(rf"\b{word}\b", text)
        if found:
            yield "superlative", text[: found.start()] + other + text[found.end() :]
            break


def paraphrases(text: str, rng: random.Random) -> Iterator[tuple[str, str]]:
    yield "spacing and case", re.sub(r" ", "  ", text[:1].lower() + text[1:], count=3) + " "
    yield (
        "polite wrapper",
        rng.choice(("Please answer: ", "Quick question. ", "Help me with this: ")) + text,
    )
    stem, newline, options = text.partition("\n")  # options (MMLU) stay as they are
    sentences = re.split(r"(?<=[.!?]) (?=[A-Z])", stem)
    if len(sentences) >= 3:  # two premises swapped, the question stays last
        reordered = " ".join([sentences[1], sentences[0], *sentences[2:]])
        yield "sentence order", reordered + newline + options
    words = text.split(" ")
    swapped = [SYNONYMS.get(word, word) for word in words]
    if swapped != words:
        yield "synonyms", " ".join(swapped)


def filled_store(texts: list[str], snapshot_yaml: str) -> tuple[CacheStore, object]:
    snapshot = compile_config(snapshot_yaml)
    store = CacheStore()
    for text in texts:
        _, ticket, _ = lookup(store, snapshot.cache, chat(text), USER, "v7", "r")
        if ticket is None:  # the same question twice in the file: already stored
            continue
        ticket.body += ANSWER
        store_answer(
            store, snapshot.cache, ticket, status=200, complete=True, streamed=False, tier="weak"
        )
    return store, snapshot.cache


def config(threshold: float, per_bucket: int = 100_000, entries: int = 100_000) -> str:
    return DEFAULT_CONFIG.read_text() + (
        f"\ncache: {{max_entries: {entries}, semantic: {{enabled: true, threshold: {threshold},"
        f" max_per_bucket: {per_bucket}}}}}\n"
    )


def hit_rate(
    store: CacheStore, settings: object, variants: list[tuple[str, str]]
) -> dict[str, list[int]]:
    by_kind: dict[str, list[int]] = {}
    for kind, text in variants:
        _, _, status = lookup(store, settings, chat(text), USER, "v7", "r")  # type: ignore[arg-type]
        counts = by_kind.setdefault(kind, [0, 0])
        counts[0] += status == "hit"
        counts[1] += 1
    return by_kind


def quality(path: Path, seed: int) -> None:
    texts = questions(path)
    rng = random.Random(seed)
    # a variant that is itself one of the questions is a real repeat, not a near-duplicate
    known = set(texts)
    bad = [pair for text in texts for pair in must_not_hit(text) if pair[1] not in known]
    good = [pair for text in texts for pair in paraphrases(text, rng)]
    print(
        f"\n{path.name}: {len(texts)} questions, {len(bad)} must-not-hit, {len(good)} paraphrases"
    )
    print(f"{'threshold':>9}  {'false hits':>12}  {'paraphrase hits':>16}  by kind")
    for threshold in (0.8, 0.85, 0.9, 0.95):
        store, settings = filled_store(texts, config(threshold))
        false = hit_rate(store, settings, bad)
        true = hit_rate(store, settings, good)
        f_hits, f_all = (sum(v[i] for v in false.values()) for i in (0, 1))
        t_hits, t_all = (sum(v[i] for v in true.values()) for i in (0, 1))
        kinds = ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in {**false, **true}.items())
        print(f"{threshold:>9}  {f_hits:>5}/{f_all:<6}  {t_hits / t_all:>15.1%}  {kinds}")


def timed(function: Callable[[], object], rounds: int = 7, number: int = 300) -> float:
    samples = []
    for _ in range(rounds):
        started = (
            time.thread_time()
        )  # CPU time: waiting for a core on a shared machine is not counted
        for _ in range(number):
            function()
        samples.append((time.thread_time() - started) / number)
    return statistics.median(samples) * 1e6


def distinct_questions(texts: list[str], count: int, seed: int) -> list[str]:
    """`count` questions in one bucket and unlike each other: random 40-word draws from the
    data's vocabulary (letters only, so no two differ in a fact)."""
    vocabulary = sorted({w for t in texts for w in re.findall(r"\b[a-z]{3,}\b", t.lower())})
    rng = random.Random(seed)
    return [" ".join(rng.choices(vocabulary, k=40)) + "?" for _ in range(count)]


def costs(path: Path, seed: int) -> None:
    pool = distinct_questions(questions(path), 10_000, seed)
    print("\nlookup cost of a miss, 10,000 entries in one bucket")
    print("(CPU time of the lookup, median of 7 x 300 lookups)")
    sample = questions(path)[0]
    probes = {
        "78-char question": (
            "An entirely new question about something that was never asked before at all?"
        ),
        f"{len(sample)}-char data question": sample,
        "4 KB question": (sample + " ") * (4096 // (len(sample) + 1)),
    }
    for label, semantic in (("exact only", False), ("exact + semantic", True)):
        yaml_text = (
            config(0.9)
            if semantic
            else DEFAULT_CONFIG.read_text() + "\ncache: {max_entries: 100000}\n"
        )
        store, settings = filled_store(pool, yaml_text)
        for name, text in probes.items():
            probe = chat(text)
            cost = timed(lambda s=store, c=settings, p=probe: lookup(s, c, p, USER, "v7", "r"))  # type: ignore[misc]
            print(f"  {label:<17} {name:<24} {cost:7.1f} µs  ({len(store)} entries)")
    plain = compile_config(DEFAULT_CONFIG.read_text()).cache
    print(f"  cache off: enabled={plain.enabled} (no lookup at all)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    paths = [args.data / name for name in FILES if (args.data / name).exists()]
    if not paths:
        raise SystemExit(f"no data files in {args.data}")
    if not args.skip_quality:
        for path in paths:
            quality(path, args.seed)
    costs(paths[0], args.seed)


if __name__ == "__main__":
    main()
