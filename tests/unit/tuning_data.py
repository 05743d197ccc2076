"""Small labelled data sets for the tuning tools' tests, written in the project."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from extproc.tuning.dataset import ReadStats, Record, make_record

#: Filler words containing no v7 keyword (so v7 decides on length and message count only).
_PROSE = (
    "please look at this function and tell me what it returns for an empty list of numbers "
    "when the input has spaces then print the total count of items per row in the table"
)
FILLER = tuple(_PROSE.split())

PRICED_CONFIG = """
tiers:
  - {name: weak, model: small, price: {input_per_mtok: 1, output_per_mtok: 2}}
  - {name: strong, model: large, price: {input_per_mtok: 10, output_per_mtok: 20}}
classifier: v1
classifiers:
  # the version under test
  v1:
    text: all
    default: weak
    rules:
      - {name: keyword, kind: keyword, tier: strong, keywords: [refactor, 설계]}
      - {name: long_text, kind: chars, gt: 100, tier: strong}
      - {name: long_bytes, kind: bytes, gt: 600, tier: strong, enabled: false}
server:
  paths: [/v1/chat/completions]
"""


def chat(text: str, label: str | None = None, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"messages": [{"role": "user", "content": text}], **fields}
    if label is not None:
        data["label"] = label
    return data


def records(items: Iterable[dict[str, Any]]) -> list[Record]:
    stats = ReadStats()
    out = []
    for index, item in enumerate(items):
        data = {"id": f"r{index}", **item}
        out.append(make_record(index, data, stats, f"item {index}"))
    return out


def write_jsonl(path: Path, items: Iterable[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in items))
    return path


def planted(n: int = 600, seed: int = 1, word: str = "kubernetes") -> Iterator[dict[str, Any]]:
    """30 % strong; 80 % of strong requests (and 2 % of weak ones) mention `word`."""
    rng = random.Random(seed)
    for index in range(n):
        strong = rng.random() < 0.3
        text = " ".join(rng.choice(FILLER) for _ in range(rng.randint(4, 20)))
        if (strong and rng.random() < 0.8) or (not strong and rng.random() < 0.02):
            text = f"{text} {word} {rng.choice(FILLER)}"
        yield {
            "id": f"p{index:04d}",
            "source": "synthetic",
            **chat(text, "strong" if strong else "weak"),
        }
