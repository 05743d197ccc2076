"""What the tuner's search sees: the tunable shape of a version, and the records as bit sets.

The tuner handles versions of the usual shape (every enabled rule sends to one target tier, the
default is another; v7 is one). Tunable: the text scope, the first keyword rule's keywords, and
one `gt` threshold per kind (`chars`, `bytes`, `messages`), switched on, moved or off. Any other
enabled rule is kept as it is (`analyse`).

Every labelled request is run once per text scope through `classify()` with a probe version
whose keyword rule holds every current and candidate keyword, giving its length in characters
and bytes, its message count and the keywords it contains (`features`): the search in `search`
then needs no further `classify()` call.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc.config.snapshot import RuleKind, Snapshot, TextScope
from extproc.core.classify import classify
from extproc.core.errors import CascadeError
from extproc.tuning.candidates import Example, probe_hits
from extproc.tuning.variants import binary_shape, compile_variant, is_enabled, version_spec

THRESHOLD_KINDS = (RuleKind.CHARS.value, RuleKind.BYTES.value, RuleKind.MESSAGES.value)
DEFAULT_NAMES = {
    "keyword": "keyword",
    "chars": "long_text",
    "bytes": "long_bytes",
    "messages": "many_messages",
}
#: The version-wide scopes the search tries (`conversation` and `system` are for rules written
#: by hand, e.g. IDE traffic: docs/configuration.md).
SCOPES = (TextScope.ALL.value, TextScope.USER.value, TextScope.LAST_USER.value)


class TuneError(CascadeError):
    """The version cannot be tuned (its shape), or the data cannot support it."""


@dataclass(frozen=True, slots=True)
class Params:
    scope: str
    keywords: tuple[str, ...]
    gts: tuple[tuple[str, int | None], ...]  # (kind, gt or None when off), in THRESHOLD_KINDS order

    def gt(self, kind: str) -> int | None:
        return dict(self.gts)[kind]

    def with_gt(self, kind: str, value: int | None) -> Params:
        return Params(
            self.scope, self.keywords, tuple((k, value if k == kind else v) for k, v in self.gts)
        )


@dataclass(slots=True)
class Features:
    """Everything the search needs about the records under one text scope, as bit sets."""

    scope: str
    positive: int
    fixed: int
    values: dict[str, list[int]]
    keywords: dict[str, int]
    candidates: dict[str, list[int]]
    _masks: dict[tuple[str, int], int] = field(default_factory=dict)
    #: records whose label is the default tier; None: every record not positive (two tiers)
    default_ok: int | None = None
    #: quality gained by sending a record to the target tier instead of the default, grouped by
    #: value: (gain, records with it); gains in records' worth (1 = the largest gap seen)
    gains: list[tuple[float, int]] = field(default_factory=list)

    def threshold(self, kind: str, gt: int | None) -> int:
        if gt is None:
            return 0
        key = (kind, gt)
        found = self._masks.get(key)
        if found is None:
            found = 0
            for index, value in enumerate(self.values[kind]):
                if value > gt:
                    found |= 1 << index
            self._masks[key] = found
        return found

    def keyword_mask(self, words: Sequence[str]) -> int:
        mask = 0
        for word in words:
            mask |= self.keywords.get(word, 0)
        return mask

    def predict(self, params: Params) -> int:
        mask = self.fixed | self.keyword_mask(params.keywords)
        for kind, gt in params.gts:
            mask |= self.threshold(kind, gt)
        return mask


@dataclass(slots=True)
class Shape:
    """Where the tunable parts sit in the base version's rule list."""

    target: str
    default: str
    keyword_index: int | None
    threshold_index: dict[str, int]
    fixed_rules: list[dict[str, Any]]


def analyse(snapshot: Snapshot, version: str) -> tuple[Shape, Params]:
    classifier = snapshot.classifiers[version]
    shape = binary_shape(classifier, snapshot.tier_names)
    if shape is None:
        raise TuneError(
            f"version {version!r} has rules sending to several tiers (or to its default): "
            "tune handles versions whose rules all send to one tier"
        )
    target, default = shape
    spec = version_spec(snapshot, version)
    keyword_index: int | None = None
    thresholds: dict[str, int] = {}
    fixed = []
    for index, rule in enumerate(spec.get("rules", [])):
        kind = rule["kind"]
        if (
            kind == "keyword"
            and keyword_index is None
            and is_enabled(rule)
            and rule["tier"] == target
        ):
            keyword_index = index
        elif (
            kind in THRESHOLD_KINDS
            and kind not in thresholds
            and rule["tier"] == target
            and "gt" in rule
            and "lt" not in rule
        ):
            thresholds[kind] = index
        elif is_enabled(rule):
            fixed.append(rule)
    rules = spec.get("rules", [])
    words: tuple[str, ...] = ()
    if keyword_index is not None:
        words = tuple(dict.fromkeys(str(k).lower() for k in rules[keyword_index]["keywords"]))
    gts = tuple(
        (
            kind,
            int(rules[thresholds[kind]]["gt"])
            if kind in thresholds and is_enabled(rules[thresholds[kind]])
            else None,
        )
        for kind in THRESHOLD_KINDS
    )
    base = Params(classifier.text.value, words, gts)
    return Shape(target, default, keyword_index, thresholds, fixed), base


def features(
    snapshot: Snapshot,
    shape: Shape,
    scope: str,
    examples: Sequence[Example],
    words: Sequence[str],
    base: Params,
) -> Features:
    chats = [e.chat for e in examples]
    hits = probe_hits(snapshot, scope, words, chats) if words else [() for _ in chats]
    # lengths come from the same classify() call pattern: a probe decision carries them
    probe = compile_variant(
        snapshot, "lengths", {"text": scope, "default": shape.default, "rules": []}
    )
    decisions = [classify(chat, probe) for chat in chats]
    fixed = 0
    if shape.fixed_rules:
        fixed_version = compile_variant(
            snapshot,
            "fixed",
            {"text": scope, "default": shape.default, "rules": copy.deepcopy(shape.fixed_rules)},
        )
        for index, chat in enumerate(chats):
            if classify(chat, fixed_version).tier == shape.target:
                fixed |= 1 << index
    positive = default_ok = 0
    keyword_masks: dict[str, int] = {}
    for index, (example, found) in enumerate(zip(examples, hits, strict=True)):
        if example.positive:
            positive |= 1 << index
        elif example.default_ok is not False:
            default_ok |= 1 << index
        for word in found:
            keyword_masks[word] = keyword_masks.get(word, 0) | (1 << index)
    values = {
        "chars": [d.chars for d in decisions],
        "bytes": [d.bytes for d in decisions],
        "messages": [d.messages for d in decisions],
    }
    candidates = {
        kind: _threshold_candidates(values[kind], kind, base.gt(kind)) for kind in THRESHOLD_KINDS
    }
    return Features(
        scope,
        positive,
        fixed,
        values,
        keyword_masks,
        candidates,
        default_ok=default_ok,
        gains=gain_masks([e.gain for e in examples]),
    )


#: Steps of a record's worth that quality gains are rounded to in the search.
GAIN_STEPS = 32


def gain_masks(gains: Sequence[float]) -> list[tuple[float, int]]:
    """Gains scaled to the largest (1 = one record's worth) and rounded to 1/32, as bit sets.

    Booleans give exactly -1, 0 and +1; graded scores (a judge's 1-10) are rounded, which only
    the search sees: the reported figures come from `classify()` and the exact scores.
    """
    scale = max((abs(g) for g in gains), default=0.0)
    if scale == 0:
        return []
    masks: dict[int, int] = {}
    for index, gain in enumerate(gains):
        step = round(gain / scale * GAIN_STEPS)
        if step:
            masks[step] = masks.get(step, 0) | (1 << index)
    return [(step / GAIN_STEPS, mask) for step, mask in sorted(masks.items())]


def _nice(value: int) -> int:
    """Round to two significant digits (487 -> 490, 1234 -> 1200) for readable thresholds."""
    if value < 100:
        return value
    digits = len(str(value)) - 2
    return round(value, -digits)


def _threshold_candidates(values: Sequence[int], kind: str, current: int | None) -> list[int]:
    ordered = sorted(values)
    found: set[int] = set()
    if ordered:
        if kind == "messages":
            found.update(v for v in set(ordered) if v <= 50)
        else:
            for step in range(1, 40):
                found.add(_nice(ordered[step * (len(ordered) - 1) // 40]))
    if current is not None:
        found.add(current)
    return sorted(found)
