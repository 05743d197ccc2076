"""The pure classification core: `(ChatRequest, Classifier) -> Decision`.

No I/O, no gRPC, no telemetry. The server calls it per request; the offline tools replay recorded
requests through the same function.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from extproc.core.chat import ChatRequest
from extproc.core.rules import SYSTEM_ROLES, Classifier, Rule, RuleKind, TextScope

if TYPE_CHECKING:  # numpy loads only with a scorer step in the config
    from extproc.core.scorer import ScoreResult

#: Kept as they are in the reason header; everything else is percent-encoded UTF-8.
_PRINTABLE_ASCII = "".join(ch for ch in string.printable if ch.isprintable())

#: `rule` of a decision taken when no rule matched.
RULE_DEFAULT = "default"
#: `rule` of a decision taken without classifying (body unusable, too large, not UTF-8).
RULE_UNPARSED = "unparsed"
#: `rule` of a decision taken because classification raised.
RULE_ERROR = "error"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the router decided for one request, and why."""

    tier: str
    classifier: str
    rule: str
    #: Short ASCII reason for the `x-cascade-reason` header, e.g. `keyword:refactor`, `chars>500`.
    reason: str
    keywords: tuple[str, ...] = ()
    chars: int = 0
    bytes: int = 0
    messages: int = 0
    #: A scorer step's calibrated probability at the boundary that decided (also when it
    #: abstained and a later rule decided), its threshold, every boundary's probability, and the
    #: names (never text) of the features that pushed most toward its outcome.
    score: float | None = None
    threshold: float | None = None
    scores: tuple[float, ...] = ()
    features: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        found: dict[str, object] = {
            "tier": self.tier,
            "classifier": self.classifier,
            "rule": self.rule,
            "reason": self.reason,
            "keywords": list(self.keywords),
            "chars": self.chars,
            "bytes": self.bytes,
            "messages": self.messages,
        }
        if self.score is not None:
            found.update(
                score=self.score,
                threshold=self.threshold,
                scores=list(self.scores),
                features=list(self.features),
            )
        return found

    @property
    def score_header(self) -> str | None:
        """The `x-cascade-score` value (3 decimals), or None without a scorer step."""
        return None if self.score is None else f"{self.score:.3f}"


def select_text(messages: tuple[tuple[str, str], ...], scope: TextScope) -> str:
    """The text a classifier version reads; messages without text are skipped."""
    if scope is TextScope.ALL:
        return " ".join([text for _role, text in messages if text])
    if scope is TextScope.USER:
        return " ".join([text for role, text in messages if role == "user" and text])
    if scope is TextScope.CONVERSATION:
        return " ".join([text for role, text in messages if role not in SYSTEM_ROLES and text])
    if scope is TextScope.SYSTEM:
        return " ".join([text for role, text in messages if role in SYSTEM_ROLES and text])
    for role, text in reversed(messages):
        if role == "user":
            return text
    return ""


def count_messages(messages: tuple[tuple[str, str], ...], scope: TextScope) -> int:
    """The messages in a scope (with or without text); `last_user` counts 0 or 1."""
    if scope is TextScope.ALL:
        return len(messages)
    if scope is TextScope.USER:
        return sum(1 for role, _text in messages if role == "user")
    if scope is TextScope.CONVERSATION:
        return sum(1 for role, _text in messages if role not in SYSTEM_ROLES)
    if scope is TextScope.SYSTEM:
        return sum(1 for role, _text in messages if role in SYSTEM_ROLES)
    return int(any(role == "user" for role, _text in messages))


class _Scoped:
    """The text of other scopes than the version's, computed once when a rule asks."""

    __slots__ = ("_messages", "_texts")

    def __init__(self, messages: tuple[tuple[str, str], ...]) -> None:
        self._messages = messages
        self._texts: dict[TextScope, tuple[str, bytes]] = {}

    def text(self, scope: TextScope) -> tuple[str, bytes]:
        found = self._texts.get(scope)
        if found is None:
            text = select_text(self._messages, scope)
            found = self._texts[scope] = (text, text.encode("utf-8"))
        return found


def classify(chat: ChatRequest, classifier: Classifier) -> Decision:
    """Evaluate the classifier's rules in order; the first match decides.

    A scorer rule decides either way (its tier from the probabilities) unless the probability is
    within its abstain band, in which case the following rules decide; the decision then still
    carries the score.
    """
    text = select_text(chat.messages, classifier.text)
    data = text.encode("utf-8")
    chars, size, count = len(text), len(data), len(chat.messages)
    scored: ScoreResult | None = None
    scoped: _Scoped | None = None
    for rule in classifier.rules:
        rule_text, rule_data = text, data
        if rule.text is not None and rule.text is not classifier.text:
            scoped = scoped or _Scoped(chat.messages)
            rule_text, rule_data = scoped.text(rule.text)
        if rule.matcher is not None:
            found = rule.matcher.search(rule_text, rule_data)
            if found:
                return _decision(
                    classifier,
                    rule.tier,
                    rule.name,
                    f"{rule.name}:{_ascii(found[0])}",
                    (chars, size, count),
                    scored,
                    found,
                )
            continue
        if rule.scorer is not None:
            scored = rule.scorer.decide(chat.messages)
            if scored.tier is not None:
                sign = ">=" if scored.escalated else "<"
                reason = f"{rule.name}:p{sign}{scored.threshold:.3f}"
                return _decision(
                    classifier, scored.tier, rule.name, reason, (chars, size, count), scored
                )
            continue
        if rule.kind is RuleKind.CHARS:
            value = len(rule_text)
        elif rule.kind is RuleKind.BYTES:
            value = len(rule_data)
        else:  # messages: every message, or those of the rule's own scope
            value = count if rule.text is None else count_messages(chat.messages, rule.text)
        if _in_range(rule, value):
            return _decision(
                classifier,
                rule.tier,
                rule.name,
                f"{rule.name}:{rule.describe()}",
                (chars, size, count),
                scored,
            )
    return _decision(
        classifier, classifier.default, RULE_DEFAULT, RULE_DEFAULT, (chars, size, count), scored
    )


def _decision(
    classifier: Classifier,
    tier: str,
    rule: str,
    reason: str,
    lengths: tuple[int, int, int],
    scored: ScoreResult | None,
    keywords: tuple[str, ...] = (),
) -> Decision:
    chars, size, count = lengths
    if scored is None:
        return Decision(tier, classifier.version, rule, reason, keywords, chars, size, count)
    return Decision(
        tier,
        classifier.version,
        rule,
        reason,
        keywords,
        chars,
        size,
        count,
        score=scored.score,
        threshold=scored.threshold,
        scores=scored.scores,
        features=scored.features,
    )


def _in_range(rule: Rule, value: int) -> bool:
    if rule.gt is not None and value <= rule.gt:
        return False
    return rule.lt is None or value < rule.lt


def _ascii(keyword: str) -> str:
    """Keywords go into an HTTP header: percent-encode what is not printable ASCII."""
    if keyword.isascii() and keyword.isprintable():
        return keyword
    return quote(keyword, safe=_PRINTABLE_ASCII)


def canary_bucket(key: str | bytes) -> float:
    """Map a key uniformly and deterministically to [0, 100)."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    digest = hashlib.blake2b(raw, digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 / 100.0
