"""`cascade eval` over 100,000 labelled records: wall time of the command, as a user runs it.

Generates synthetic chat records by seed (`--records`, default 100,000; `--seed`): English,
Korean and Chinese; 1 to 8 messages; lengths from a few words to a few thousand characters;
labels, per-model evidence (booleans and a judge's 1-10 scores) and token counts; two sources.
Writes them as JSONL in a temporary directory with a priced copy of the packaged config that has
a second version, and times the `cascade` console script on them:

1. `cascade eval DATA` (the stable v7; table on stdout; curve, baselines, oracle);
2. `cascade eval DATA --classifier v7 --classifier v7b --by source --by lang --report r.html`
   (two versions side by side, breakdowns, sweep and HTML report with its SVG plots);
3. `cascade eval DATA --quality-field weak=weak_score,strong=strong_score --max-misroute 0.05
   --weak-share 0.6:0.7` (graded quality and the SLO check).

    .venv/bin/python bench/bench_eval.py [--records 100000] [--repeat 3] [--seed 42]

The figure to meet (issue 13): 100,000 records in at most 15 s.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from extproc.config.snapshot import DEFAULT_CONFIG

CASCADE = Path(sys.executable).with_name("cascade")
PROSE = {
    "en": "please look at the function below and tell me why the test fails when the list "
    "is empty then fix the parser and refactor the module to be faster",
    "ko": "이 함수가 빈 입력에 대해 무엇을 반환하는지 알려주세요 코드를 리팩터링 해주세요 "
    "성능을 최적화 하는 방법",
    "zh": "请告诉我 这个函数 在输入为空时 返回什么 帮我重构 这段代码 并优化性能",
}
WORDS = {lang: text.split() for lang, text in PROSE.items()}
PRICES = """
  - name: weak
    model: qwen3-4b
    price: {input_per_mtok: 0.05, output_per_mtok: 0.20}
  - name: strong
    model: glm-5
    price: {input_per_mtok: 1.00, output_per_mtok: 3.20}
"""
SECOND_VERSION = """
  v7b:
    text: user
    default: weak
    rules:
      - {name: keyword, kind: keyword, tier: strong, keywords: [refactor, 리팩터, 重构, optimize]}
      - {name: long_text, kind: chars, gt: 800, tier: strong}
"""


def make_record(rng: random.Random, index: int) -> dict[str, object]:
    lang = rng.choices(("en", "ko", "zh"), weights=(6, 2, 2))[0]
    turns = rng.choices((1, 2, 3, 5, 8), weights=(10, 4, 3, 2, 1))[0]
    messages = [{"role": "system", "content": "You are a helpful coding assistant."}]
    for turn in range(turns):
        size = int(rng.lognormvariate(3.0, 1.0)) + 3
        text = " ".join(rng.choice(WORDS[lang]) for _ in range(size))
        messages.append({"role": "user" if turn % 2 == 0 else "assistant", "content": text})
    strong = rng.random() < 0.25
    return {
        "id": f"bench-{index:05d}",
        "source": rng.choice(("ide", "chat-ui")),
        "messages": messages,
        "label": "strong" if strong else "weak",
        "evidence": {
            "strong_correct": rng.random() < 0.85,
            "weak_correct": not strong,
            "weak_score": rng.randint(1, 10),
            "strong_score": rng.randint(3, 10),
        },
        "tokens_in": sum(len(m["content"]) for m in messages) // 4 + 1,
        "tokens_out": rng.randint(20, 600),
    }


def write_inputs(directory: Path, count: int, seed: int = 42) -> tuple[Path, Path]:
    rng = random.Random(seed)
    data = directory / "records.jsonl"
    with data.open("wb") as stream:
        for index in range(count):
            stream.write(orjson.dumps(make_record(rng, index)) + b"\n")
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    head, _, rest = text.partition("tiers:\n")
    rest = rest.split("\n# Tier used", 1)[1]
    config = head + "tiers:" + PRICES + "\n# Tier used" + rest
    config = config.replace("\nserver:", SECOND_VERSION + "\nserver:", 1)
    path = directory / "cascade.yaml"
    path.write_text(config, encoding="utf-8")
    return data, path


def timed(args: list[str], repeat: int) -> tuple[list[float], list[float]]:
    """Wall times and CPU times (user + system of the child) of each run."""
    times, cpu = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return times, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        data, config = write_inputs(directory, args.records, args.seed)
        size = data.stat().st_size / 1e6
        print(f"{args.records:,} records, {size:.1f} MB of JSONL")
        runs = {
            "eval (v7)": [str(CASCADE), "eval", str(data), "--config", str(config)],
            "eval (v7 + v7b, breakdowns, HTML report)": [
                str(CASCADE),
                "eval",
                str(data),
                "--config",
                str(config),
                "--classifier",
                "v7",
                "--classifier",
                "v7b",
                "--by",
                "source",
                "--by",
                "lang",
                "--report",
                str(directory / "report.html"),
            ],
            "eval (graded quality, SLO check)": [
                str(CASCADE),
                "eval",
                str(data),
                "--config",
                str(config),
                "--quality-field",
                "weak=weak_score,strong=strong_score",
                "--max-misroute",
                "0.05",
                "--weak-share",
                "0.6:0.7",
            ],
        }
        for label, command in runs.items():
            times, cpu = timed(command, args.repeat)
            print(
                f"{label:45} median {statistics.median(times):.2f} s  "
                f"(min {min(times):.2f}, max {max(times):.2f}; CPU median "
                f"{statistics.median(cpu):.2f} s; {args.repeat} runs; target <= 15 s)"
            )


if __name__ == "__main__":
    main()
