"""The tuner's search: thresholds, keyword removals and additions, scored with bit sets.

The search scores a candidate as "target if a fixed rule, a keyword or a threshold matches" with
bit sets over the records (`features`; microseconds per candidate), greedily taking the best
single move (set a threshold, remove a keyword, add a keyword) until none improves the training
score. The chosen version is then written as a config document, compiled by `compile_document`,
and checked against `classify()` on every record: all reported figures come from `classify()`.

Objective, in records of the training split:
- with `--weak-share LO:HI`: first the SLO violation (records outside the band, plus misroutes
  over `--max-misroute` when given), then misroutes, then the larger weak share;
- with only `--max-misroute`: first the violation, then the largest weak share, then misroutes;
- with neither: misroutes, then the larger weak share;
- with `--max-strong-share X` (a budget): records sent to the target tier over the budget count
  as violation;
- with `--objective pgr`: first the violation, then the quality gained over sending everything
  to the default tier (what PGR measures; in records' worth, see `features.Features.gains`),
  then misroutes.
A keyword is added or removed only when that removes at least `min_gain` misroutes (or records
of SLO violation) on the training split, so a handful of records cannot change the keyword list,
and keywords the training data never shows (other languages, other domains) stay.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from extproc.tuning.features import Features, Params

POOL_SIZE = 400


#: Goals of the search.
MISROUTE, PGR = "misroute", "pgr"


@dataclass(frozen=True, slots=True)
class Objective:
    max_misroute: float | None = None
    weak_share: tuple[float, float] | None = None
    #: a budget: the largest share of requests sent to the target tier
    max_strong_share: float | None = None
    #: "misroute" (the SLO, then misroutes) or "pgr" (the SLO, then the quality gained)
    goal: str = MISROUTE

    def describe(self) -> str:
        parts = []
        if self.weak_share:
            parts.append(
                f"weak share {100 * self.weak_share[0]:.0f}-{100 * self.weak_share[1]:.0f} %"
            )
        if self.max_misroute is not None:
            parts.append(f"misroute <= {100 * self.max_misroute:.1f} %")
        if self.max_strong_share is not None:
            parts.append(f"strong share <= {100 * self.max_strong_share:.1f} %")
        slo = " and ".join(parts) or "none"
        if self.goal == PGR:
            goal = "maximise quality (PGR)"
            if self.max_strong_share is not None:
                goal += " within the strong-share budget"
        elif self.weak_share:
            goal = "minimise misroute within the band"
        elif self.max_misroute is not None:
            goal = "maximise weak share under the misroute ceiling"
        else:
            goal = "minimise misroute"
        return f"SLO: {slo}; goal: {goal}"

    def violation(self, n: int, misroutes: int, weak: int) -> float:
        excess = 0.0
        if self.weak_share:
            low, high = self.weak_share[0] * n, self.weak_share[1] * n
            excess += max(0.0, low - weak) + max(0.0, weak - high)
        if self.max_misroute is not None:
            excess += max(0.0, misroutes - self.max_misroute * n)
        if self.max_strong_share is not None:
            excess += max(0.0, (n - weak) - self.max_strong_share * n)
        return excess

    def score(
        self, n: int, misroutes: int, weak: int, gain: float = 0.0
    ) -> tuple[float, float, float]:
        """Lower is better: (SLO violation in records, the goal, a tie-break)."""
        violation = self.violation(n, misroutes, weak)
        if self.goal == PGR:
            return (violation, -gain, misroutes)
        if self.weak_share or self.max_misroute is None:
            return (violation, misroutes, -weak)
        return (violation, -weak, misroutes)


@dataclass(frozen=True, slots=True)
class State:
    params: Params
    score: tuple[float, float, float]
    misroutes: int
    weak: int
    gain: float = 0.0


@dataclass(slots=True)
class SearchResult:
    state: State
    n: int
    moves: list[str]

    @property
    def feasible(self) -> bool:
        return self.state.score[0] == 0


def wilson_lower(good: int, total: int, z: float = 1.96) -> float:
    """Lower bound of the 95 % confidence interval of a proportion (Wilson score interval)."""
    if total == 0:
        return 0.0
    p = good / total
    centre = p + z * z / (2 * total)
    margin = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return (centre - margin) / (1 + z * z / total)


def pool_for(data: Features, subset: int, words: Sequence[str], min_count: int) -> list[str]:
    """Keywords worth trying: in at least `min_count` target records of the subset, and right
    (target-labelled) in more than half the records they match, with 95 % confidence."""
    positive = data.positive & subset
    ranked = []
    for word in words:
        mask = data.keywords.get(word, 0) & subset
        hits = mask.bit_count()
        good = (mask & positive).bit_count()
        if good >= min_count and wilson_lower(good, hits) > 0.5:
            ranked.append((-good, word))
    return [word for _good, word in sorted(ranked)[:POOL_SIZE]]


def search(
    data: Features,
    subset: int,
    start: Params,
    pool: Sequence[str],
    objective: Objective,
    *,
    min_gain: int = 2,
    max_new_keywords: int = 30,
    max_moves: int = 200,
) -> SearchResult:
    """Greedy best-move descent from `start`, scored on the records in `subset`."""
    n = subset.bit_count()
    positive = data.positive & subset
    # records for which the default tier is wrong too (labels of a third tier)
    default_ok = ~data.positive if data.default_ok is None else data.default_ok
    not_default = subset & ~default_ok
    gains = [(value, mask & subset) for value, mask in data.gains]
    use_gain = objective.goal == PGR

    def state(params: Params, pred: int) -> State:
        pred &= subset
        misroutes = (pred & ~positive).bit_count() + (not_default & ~pred).bit_count()
        weak = n - pred.bit_count()
        gain = sum(v * (pred & m).bit_count() for v, m in gains) if use_gain else 0.0
        return State(params, objective.score(n, misroutes, weak, gain), misroutes, weak, gain)

    current = state(start, data.predict(start))
    original = set(start.keywords)
    moves: list[str] = []
    for _ in range(max_moves):
        options = _moves(data, current.params, pool, original, max_new_keywords)
        best: tuple[State, str] | None = None
        for params, pred, label, keyword_move in options:
            candidate = state(params, pred)
            if keyword_move and not _gains(current.score, candidate.score, min_gain):
                continue
            if candidate.score < current.score and (
                best is None or candidate.score < best[0].score
            ):
                best = (candidate, label)
        if best is None:
            break
        after, label = best
        gained = f", quality gain {current.gain:+.1f} -> {after.gain:+.1f}" if use_gain else ""
        moves.append(
            f"{label}: misroutes {current.misroutes} -> {after.misroutes}, "
            f"weak {current.weak} -> {after.weak} of {n}{gained}"
        )
        current = after
    return SearchResult(current, n, moves)


def _moves(
    data: Features, params: Params, pool: Sequence[str], original: set[str], max_new: int
) -> list[tuple[Params, int, str, bool]]:
    """Every single-step change of `params`, with its prediction bit set."""
    found: list[tuple[Params, int, str, bool]] = []
    keyword_mask = data.keyword_mask(params.keywords)
    thresholds = {kind: data.threshold(kind, gt) for kind, gt in params.gts}
    for kind, gt in params.gts:
        others = data.fixed | keyword_mask
        for other_kind, mask in thresholds.items():
            if other_kind != kind:
                others |= mask
        for value in [None, *data.candidates[kind]]:
            if value != gt:
                label = f"{kind} rule {'off' if value is None else f'> {value}'}"
                found.append(
                    (
                        params.with_gt(kind, value),
                        others | data.threshold(kind, value),
                        label,
                        False,
                    )
                )
    base = data.fixed
    for mask in thresholds.values():
        base |= mask
    for word in params.keywords:
        kept = tuple(w for w in params.keywords if w != word)
        found.append(
            (
                Params(params.scope, kept, params.gts),
                base | data.keyword_mask(kept),
                f"remove keyword {word!r}",
                True,
            )
        )
    if len(set(params.keywords) - original) < max_new:
        whole = base | keyword_mask
        for word in pool:
            if word not in params.keywords and word in data.keywords:
                added = Params(params.scope, (*params.keywords, word), params.gts)
                found.append((added, whole | data.keywords[word], f"add keyword {word!r}", True))
    return found


def _gains(
    before: tuple[float, float, float], after: tuple[float, float, float], min_gain: int
) -> bool:
    if before[0] - after[0] >= min_gain:
        return True
    return after[0] <= before[0] and before[1] - after[1] >= min_gain
