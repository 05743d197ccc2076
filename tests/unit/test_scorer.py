"""The learned scorer at serve time: feature hashing, inference, artifacts, the scorer rule."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from extproc.config.artifacts import (
    FORMAT,
    FORMAT_VERSION,
    ArtifactError,
    encode_weights,
    parse_artifact,
)
from extproc.config.snapshot import compile_config
from extproc.config.store import ConfigStore
from extproc.core import features as features_module
from extproc.core import headers
from extproc.core.chat import ChatRequest
from extproc.core.classify import classify
from extproc.core.errors import ConfigError
from extproc.core.features import DENSE_NAMES, FAMILIES, HEAD, TAIL, WINDOW, extract
from extproc.core.scorer import Scorer, ScorerStep
from extproc.routing.mutations import decision_mutation

BITS = 10
MASK = (1 << 32) - 1


def chat(*messages: tuple[str, str]) -> ChatRequest:
    return ChatRequest(messages=tuple(messages), model="", document={})


# -- a reference implementation of the documented hashing, one n-gram at a time ---------------


def _lower(ch: str) -> int:
    code = ord(ch)
    if ord("A") <= code <= ord("Z") or (0xC0 <= code <= 0xDE and code != 0xD7):
        return code + 32
    return min(code, 0x10000)


def _wordish(ch: str) -> bool:
    code = ord(ch)
    return (
        (ch.isascii() and ch.isalnum())
        or (0xC0 <= code < 0x250 and code not in (0xD7, 0xF7))
        or 0xAC00 <= code < 0xD7B0
        or 0x370 <= code < 0x1100
    )


def reference_buckets(text: str, bits: int) -> list[int]:
    k, mix, word_mix, bigram = 0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35, 0x27D4EB2F
    codes = [_lower(ch) for ch in text]
    hashes: list[int] = []
    for order in (1, 2, 3, 4):
        for i in range(len(codes) - order + 1):
            h = 0
            for c in codes[i : i + order]:
                h = (h * k + c) & MASK
            hashes.append(h)
    words: list[int] = []
    if " " in text:
        current: list[int] = []
        for ch, code in [*zip(text, codes, strict=True), (" ", 32)]:
            if _wordish(ch):
                current.append(code)
            elif current:
                pairs = [(a * k + b) & MASK for a, b in itertools.pairwise(current)]
                words.append(((sum(current) + sum(pairs)) * word_mix) & MASK)
                current = []
    hashes += words
    hashes += [(a * bigram + b) & MASK for a, b in itertools.pairwise(words)]
    return [((h * mix) & MASK) >> (32 - bits) for h in hashes]


@pytest.mark.parametrize(
    "text",
    [
        "Hello World, refactor it!",
        "쿠버네티스 클러스터 설계",
        "帮我重构这个函数",
        "Ünïcode mix 가나 汉字 ok",
        "a",
        "",
        "ab",
        "a b",
        "ab c",
        " x ",
        "one, two  three four",
    ],
)
def test_hashing_matches_the_reference(text: str) -> None:
    features = extract((("user", text),), BITS)
    assert features.buckets.tolist() == reference_buckets(text, BITS)
    total = len(features.buckets)
    assert features.scale == (pytest.approx(1 / math.sqrt(total)) if total else 0.0)
    # family starts: 1- to 4-grams of the characters, then words and word pairs
    n = len(text)
    marks = "".join("w" if _wordish(ch) else " " for ch in text)
    words = len(marks.split()) if " " in text else 0
    sizes = [max(n - k, 0) for k in range(4)] + [words, max(words - 1, 0)]
    starts = [sum(sizes[:i]) for i in range(len(FAMILIES))]
    assert features.offsets == tuple(starts)
    assert features.present == tuple(i for i, size in enumerate(sizes) if size)


@pytest.mark.parametrize("text", ["", "x", "Hello, World 42!", "tab\tand\nnewline ~`|"])
def test_the_ascii_shortcut_counts_like_the_table(text: str) -> None:
    padded, scripts, narrow, size = features_module._encoded(text, len(text))
    wide, wide_scripts, wide_narrow, wide_size = features_module._encoded_wide(text, len(text))
    assert padded.dtype == np.uint8  # the shortcut was taken
    assert padded.tolist() == wide.tolist()
    assert (scripts, narrow, size) == (wide_scripts, wide_narrow, wide_size)


def test_features_read_user_text_and_system_prompt_separately() -> None:
    user = "Explain this code:\n```py\nprint(1)\n```"
    features = extract((("system", "You are terse. 简洁"), ("user", user), ("assistant", "ok")), 12)
    dense = dict(zip(DENSE_NAMES, features.dense, strict=True))
    assert dense["user_chars"] == pytest.approx(math.log1p(len(user)))
    assert dense["user_bytes"] == pytest.approx(math.log1p(len(user.encode())))
    assert dense["system_chars"] == pytest.approx(math.log1p(len("You are terse. 简洁")))
    assert dense["system_bytes"] == pytest.approx(math.log1p(len("You are terse. 简洁".encode())))
    assert dense["messages"] == pytest.approx(math.log1p(3))
    assert dense["user_turns"] == pytest.approx(math.log1p(1))
    assert dense["code_block"] == 1.0
    # the system prompt's text is not hashed: only the user text's n-grams are there
    assert features.buckets.tolist() == reference_buckets(user, 12)
    shares = extract((("user", "ab 가나다 汉"),), 12).dense[-4:]
    assert shares == pytest.approx((2 / 6, 3 / 6, 1 / 6, 0.0))


@pytest.mark.parametrize(
    "text", ["plain ascii", "café ß ж", "한국어 中文 カナ", "emoji 😀 and 𠀀", "\x00\x7f\x80ÿĀ߿ࠀ￿"]
)
def test_byte_and_script_counts_are_exact_for_every_utf8_width(text: str) -> None:
    dense = dict(zip(DENSE_NAMES, extract((("user", text),), 12).dense, strict=True))
    assert dense["user_bytes"] == pytest.approx(math.log1p(len(text.encode())))
    wide = sum(1 for ch in text if not ch.isascii())
    tokens = math.ceil((len(text) - wide) / 4) + wide
    assert dense["user_tokens"] == pytest.approx(math.log1p(tokens))


def test_script_counts_hold_a_full_window_of_one_script() -> None:
    # every packed count reaches its largest value (the whole window) without spilling
    for char, share in (("가", 1), ("汉", 2), ("é", 0), ("ж", 3)):
        text = char * (WINDOW + 500)
        dense = dict(zip(DENSE_NAMES, extract((("user", text),), 12).dense, strict=True))
        shares = [dense[f"script_{name}"] for name in ("latin", "hangul", "han", "other")]
        assert shares == [1.0 if i == share else 0.0 for i in range(4)]
        assert dense["user_bytes"] == pytest.approx(math.log1p(len(text.encode())), rel=1e-3)
        assert dense["user_tokens"] == pytest.approx(math.log1p(len(text)), rel=1e-3)


def test_a_long_user_text_is_hashed_over_its_head_and_tail_only() -> None:
    text = "a" * HEAD + "b" * 5000 + "c" * TAIL
    features = extract((("user", text),), BITS)
    window = "a" * HEAD + " " + "c" * TAIL
    assert features.buckets.tolist() == reference_buckets(window, BITS)
    assert len(window) == WINDOW + 1
    assert features.dense[0] == pytest.approx(math.log1p(len(text)))  # lengths stay exact


# -- inference ---------------------------------------------------------------------------------


def make_scorer(seed: int, tiers: tuple[str, ...] = ("weak", "strong"), bits: int = BITS) -> Scorer:
    rng = np.random.default_rng(seed)
    boundaries = len(tiers) - 1
    dims = len(DENSE_NAMES)
    return Scorer(
        tiers=tiers,
        bits=bits,
        weights=rng.normal(0, 1, (boundaries, 1 << bits)).astype(np.float32),
        dense=tuple(tuple(rng.normal(0, 0.3, dims).tolist()) for _ in range(boundaries)),
        mean=tuple(rng.normal(0, 1, dims).tolist()),
        std=tuple(rng.uniform(0.5, 2, dims).tolist()),
        bias=tuple(rng.normal(0, 1, boundaries).tolist()),
        platt=tuple((float(rng.uniform(0.5, 2)), float(rng.normal())) for _ in range(boundaries)),
        thresholds=(0.5,) * boundaries,
        quantiles=((0.1, 0.9), (0.5, 0.5), (0.9, 0.1)),
    )


def test_scores_equal_hand_computed_dot_products() -> None:
    scorer = make_scorer(3, ("a", "b", "c"))
    messages = (("system", "be brief"), ("user", "Refactor the 데이터 pipeline 请"))
    features = extract(messages, BITS)
    raw = scorer.raw(features)
    for k in range(2):
        dot = sum(float(scorer.weights[k][b]) for b in features.buckets.tolist())
        dense = sum(
            w * (v - m) / s
            for w, v, m, s in zip(
                scorer.dense[k], features.dense, scorer.mean, scorer.std, strict=True
            )
        )
        expected = scorer.bias[k] + dot / math.sqrt(len(features.buckets)) + dense
        assert raw[k] == pytest.approx(expected, rel=1e-6)
        a, b = scorer.platt[k]
        assert 1 / (1 + math.exp(-(a * raw[k] + b))) >= scorer.probabilities(features)[k] - 1e-12
    p0, p1 = scorer.probabilities(features)
    assert p1 <= p0  # ordinal: tier b cannot be enough when a is not


def test_contributions_add_up_to_the_raw_score() -> None:
    scorer = make_scorer(5)
    features = extract((("user", "why is the sky blue? 하늘"),), BITS)
    parts = scorer.contributions(features, 0)
    assert [n for n, _ in parts] == [*FAMILIES, *DENSE_NAMES]
    assert scorer.bias[0] + sum(v for _, v in parts) == pytest.approx(scorer.raw(features)[0])


def test_decide_thresholds_abstain_and_top_features() -> None:
    scorer = make_scorer(7)
    messages = (("user", "some request text"),)
    p = scorer.probabilities(extract(messages, BITS))[0]
    up = ScorerStep(scorer, (p - 0.01,)).decide(messages)
    down = ScorerStep(scorer, (p + 0.01,)).decide(messages)
    assert (up.tier, up.escalated, down.tier, down.escalated) == ("strong", True, "weak", False)
    assert up.score == pytest.approx(p) and up.threshold == pytest.approx(p - 0.01)
    assert ScorerStep(scorer, (p + 0.01,), abstain=0.02).decide(messages).tier is None
    names = set(FAMILIES + DENSE_NAMES)
    assert up.features and set(up.features) <= names and set(down.features) <= names
    assert "some" not in " ".join(up.features)  # names only, never text


# -- artifacts and the config ------------------------------------------------------------------


def artifact_document(scorer: Scorer) -> dict[str, Any]:
    entries = []
    for k in range(scorer.boundaries):
        text, digest = encode_weights(scorer.weights[k])
        entries.append(
            {
                "above": scorer.tiers[k],
                "bias": scorer.bias[k],
                "dense": list(scorer.dense[k]),
                "platt": list(scorer.platt[k]),
                "threshold": scorer.thresholds[k],
                "weights": text,
                "weights_sha256": digest,
            }
        )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tiers": list(scorer.tiers),
        "features": {
            "bits": scorer.bits,
            "head": HEAD,
            "tail": TAIL,
            "families": list(FAMILIES),
            "dense": list(DENSE_NAMES),
        },
        "standardize": {"mean": list(scorer.mean), "std": list(scorer.std)},
        "boundaries": entries,
        "quantiles": [list(q) for q in scorer.quantiles],
        "training": {},
    }


def write_artifact(path: Path, document: dict[str, Any]) -> str:
    data = json.dumps(document).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


CONFIG = """
tiers: [{{name: weak, model: w}}, {{name: strong, model: s}}]
classifier: v9
classifiers:
  v9:
    default: weak
    rules:
      - {{name: legal, kind: keyword, tier: strong, keywords: [contract]}}
      - {{name: learned, kind: scorer, model: {model}, sha256: {sha}{extra}}}
      - {{name: long_text, kind: chars, gt: 40, tier: strong}}
"""


def write_config(directory: Path, sha: str, extra: str = "", model: str = "model.json") -> Path:
    path = directory / "cascade.yaml"
    path.write_text(CONFIG.format(model=model, sha=sha, extra=extra))
    return path


def test_artifact_round_trip_routes_like_the_scorer(tmp_path: Path) -> None:
    scorer = make_scorer(11)
    sha = write_artifact(tmp_path / "model.json", artifact_document(scorer))
    config = write_config(tmp_path, sha)
    snapshot = compile_config(config.read_bytes(), str(config))
    loaded = snapshot.classifiers["v9"].rules[1].scorer
    assert loaded is not None
    assert np.array_equal(loaded.scorer.weights, scorer.weights)
    assert loaded.scorer.sha256 == sha
    for text in ("tell me a joke", "prove the theorem", "쿠버네티스", "写一首诗"):
        messages = (("user", text),)
        p = scorer.probabilities(extract(messages, BITS))[0]
        decision = classify(chat(*messages), snapshot.classifiers["v9"])
        assert decision.rule == "learned"
        assert decision.tier == ("strong" if p >= 0.5 else "weak")
        assert decision.score == pytest.approx(p)
        assert decision.reason == f"learned:p{'>=' if p >= 0.5 else '<'}0.500"
        mutation = decision_mutation(decision)
        values = {h.header.key: h.header.raw_value for h in mutation.set_headers}
        assert values[headers.SCORE] == f"{p:.3f}".encode()
    override = classify(chat(("user", "review this contract")), snapshot.classifiers["v9"])
    assert (override.tier, override.rule, override.score) == ("strong", "legal", None)
    assert headers.SCORE not in {h.header.key for h in decision_mutation(override).set_headers}


def test_abstain_falls_through_to_the_next_rule_and_keeps_the_score(tmp_path: Path) -> None:
    scorer = make_scorer(13)
    sha = write_artifact(tmp_path / "model.json", artifact_document(scorer))
    text = "x " * 30  # 60 characters: the chars rule after the scorer sends it strong
    p = scorer.probabilities(extract((("user", text),), BITS))[0]
    config = write_config(tmp_path, sha, f", threshold: {p:.6f}, abstain: 0.05")
    snapshot = compile_config(config.read_bytes(), str(config))
    decision = classify(chat(("user", text)), snapshot.classifiers["v9"])
    assert (decision.tier, decision.rule) == ("strong", "long_text")
    assert decision.score == pytest.approx(p)
    short = classify(chat(("user", "x")), snapshot.classifiers["v9"])
    assert short.rule in ("learned", "default")


def test_strong_share_uses_the_recorded_quantiles(tmp_path: Path) -> None:
    scorer = make_scorer(17)
    sha = write_artifact(tmp_path / "model.json", artifact_document(scorer))
    config = write_config(tmp_path, sha, ", strong_share: 0.3")
    step = compile_config(config.read_bytes(), str(config)).classifiers["v9"].rules[1].scorer
    assert step is not None and step.share == 0.3
    assert step.thresholds == (pytest.approx(0.7),)  # halfway from (0.1, 0.9) to (0.5, 0.5)


def _error(tmp_path: Path, sha: str, **kw: str) -> str:
    config = write_config(tmp_path, sha, **kw)
    with pytest.raises(ConfigError) as info:
        compile_config(config.read_bytes(), str(config))
    return str(info.value)


def test_missing_mismatched_and_corrupt_artifacts_are_config_errors(tmp_path: Path) -> None:
    document = artifact_document(make_scorer(19))
    sha = write_artifact(tmp_path / "model.json", document)
    assert "cannot read" in _error(tmp_path, sha, model="absent.json")
    assert "the config names" in _error(tmp_path, "a" * 64)
    # a flipped weight byte with the file's hash updated: the weights' own hash catches it
    raw = bytearray(zlib.decompress(base64.b64decode(document["boundaries"][0]["weights"])))
    raw[5] ^= 0xFF
    bad = json.loads(json.dumps(document))
    bad["boundaries"][0]["weights"] = base64.b64encode(zlib.compress(bytes(raw))).decode()
    sha_bad = write_artifact(tmp_path / "model.json", bad)
    assert "corrupt" in _error(tmp_path, sha_bad)
    truncated = json.dumps(document).encode()[:1000]
    (tmp_path / "model.json").write_bytes(truncated)
    assert "not JSON" in _error(tmp_path, hashlib.sha256(truncated).hexdigest())
    newer = dict(document, format_version=FORMAT_VERSION + 1)
    assert "format_version" in _error(tmp_path, write_artifact(tmp_path / "model.json", newer))
    other_tiers = dict(document, tiers=["small", "big"])
    other_tiers["boundaries"] = [dict(document["boundaries"][0], above="small")]
    assert "trained for tiers" in _error(
        tmp_path, write_artifact(tmp_path / "model.json", other_tiers)
    )


def test_an_artifact_of_the_previous_format_is_refused_with_a_retrain_hint(tmp_path: Path) -> None:
    # format 1 hashed 1,024 + 1,024 characters: its weights mean other things here
    document = artifact_document(make_scorer(37))
    old = dict(
        document, format_version=1, features=dict(document["features"], head=1024, tail=1024)
    )
    message = _error(tmp_path, write_artifact(tmp_path / "model.json", old))
    assert "format_version: this server reads 2, got 1" in message and "retrain" in message
    # the same document under the current version number is still refused, for its window
    relabelled = dict(old, format_version=FORMAT_VERSION)
    assert "features.head" in _error(tmp_path, write_artifact(tmp_path / "model.json", relabelled))


def test_parse_refuses_a_decreasing_calibration() -> None:
    document = artifact_document(make_scorer(23))
    document["boundaries"][0]["platt"] = [-1.0, 0.0]
    with pytest.raises(ArtifactError, match="monotone"):
        parse_artifact(json.dumps(document).encode())


def test_the_store_keeps_the_last_good_snapshot_when_the_artifact_breaks(tmp_path: Path) -> None:
    scorer = make_scorer(29)
    sha = write_artifact(tmp_path / "model.json", artifact_document(scorer))
    config = write_config(tmp_path, sha)
    store = ConfigStore.open(config)
    good = store.current
    messages: list[tuple[bool, str]] = []
    store.listeners.append(lambda ok, message: messages.append((ok, message)))
    # a new artifact the config does not name: the config's next edit is refused
    other = write_artifact(tmp_path / "model.json", artifact_document(make_scorer(31)))
    config.write_text(config.read_text() + "\n# touched\n")
    assert store.poll() is False
    assert store.current is good and "the config names" in messages[-1][1]
    # naming the new hash makes it good again, and the new weights are used
    config.write_text(config.read_text().replace(sha, other))
    assert store.poll() is True
    step = store.current.classifiers["v9"].rules[1].scorer
    assert step is not None and step.scorer.sha256 == other
    # a corrupt artifact under the named hash is refused too
    (tmp_path / "model.json").write_bytes(b"{broken")
    config.write_text(config.read_text().replace(other, hashlib.sha256(b"{broken").hexdigest()))
    current = store.current
    assert store.poll() is False and store.current is current
