"""The learned scorer at serve time: compiled linear models over `extproc.core.features`.

A `Scorer` is what a trained artifact compiles to (`extproc.config.artifacts` reads and checks the
file; nothing here does I/O). For tiers t0 < t1 < ... < tn it holds one logistic model per
boundary k: the calibrated probability that tier tk is *not enough* for the request (the label is
above tk). The probabilities are made non-increasing in k (a request that t1 cannot handle cannot
be handled by t0 either).

One model's score: `bias + scale * sum(weights[bucket] for every n-gram occurrence) +
sum(dense_weight * (value - mean) / std)`, then Platt's calibration `1 / (1 + exp(-(a * score +
b)))`. The weights of every boundary sit in one `(boundaries, buckets)` array so one `take` serves
all of them.

`ScorerStep` is a scorer placed in a classifier version's rules with its thresholds (per
boundary) and an abstain band; `decide` returns the tier, or None to fall through to the
following rules.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from extproc.core.features import DENSE_NAMES, FAMILIES, Features, extract

_take = np.ndarray.take
_reduceat = np.add.reduceat

#: Names of the contributions `explain` can report (never any text of the request).
CONTRIBUTION_NAMES = FAMILIES + DENSE_NAMES


@dataclass(frozen=True, slots=True, eq=False)
class Scorer:
    """A compiled artifact: per-boundary linear models and their calibration."""

    #: Tiers the artifact was trained for, cheapest first.
    tiers: tuple[str, ...]
    #: `2**bits` hash buckets.
    bits: int
    #: (boundaries, 2**bits) float32 weights of the hashed n-grams.
    weights: npt.NDArray[np.float32]
    #: Per boundary: weights of the standardised dense features.
    dense: tuple[tuple[float, ...], ...]
    #: Standardisation of the dense features: mean and standard deviation per feature.
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bias: tuple[float, ...]
    #: Platt calibration per boundary: p = 1 / (1 + exp(-(a * score + b))).
    platt: tuple[tuple[float, float], ...]
    #: Thresholds the artifact was trained with, per boundary (p >= threshold: tier not enough).
    thresholds: tuple[float, ...]
    #: Top boundary: (strong share, threshold) pairs from held-out scores, share descending in
    #: threshold, for thresholds given as a budget.
    quantiles: tuple[tuple[float, float], ...] = ()
    #: The content hash the config named (sha256 hex), for logs.
    sha256: str = ""
    #: Derived at construction: each boundary's weight row (a view), and per boundary the
    #: dense features' (weight / std, weight * mean / std) pairs, so a request costs one `take`
    #: with one boundary (two tiers) and one zip per boundary.
    _rows: tuple[npt.NDArray[np.float32], ...] = field(init=False, repr=False, default=())
    _dense_terms: tuple[tuple[tuple[float, float], ...], ...] = field(
        init=False, repr=False, default=()
    )

    def __post_init__(self) -> None:
        rows = tuple(self.weights[k] for k in range(self.weights.shape[0]))
        terms = tuple(
            tuple((w / s, w * m / s) for w, m, s in zip(weights, self.mean, self.std, strict=True))
            for weights in self.dense
        )
        object.__setattr__(self, "_rows", rows)
        object.__setattr__(self, "_dense_terms", terms)

    @property
    def boundaries(self) -> int:
        return len(self.bias)

    def raw(self, features: Features) -> list[float]:
        """Uncalibrated scores per boundary."""
        return self.scored(features)[0]

    def probabilities(self, features: Features) -> tuple[float, ...]:
        """Calibrated P(tier k is not enough) per boundary, non-increasing in k."""
        return self.calibrate(self.raw(features))

    def calibrate(self, raw: list[float]) -> tuple[float, ...]:
        result: list[float] = []
        ceiling = 1.0
        for score, (a, b) in zip(raw, self.platt, strict=True):
            ceiling = min(ceiling, _sigmoid(a * score + b))
            result.append(ceiling)
        return tuple(result)

    def contributions(self, features: Features, boundary: int) -> list[tuple[str, float]]:
        """(name, contribution to the raw score) of each feature family and dense feature."""
        values = self.scored(features)[1][boundary]
        return list(zip(CONTRIBUTION_NAMES, values, strict=True))

    def scored(self, features: Features) -> tuple[list[float], list[list[float]]]:
        """Raw scores per boundary, and per boundary the contribution of every feature (the
        families' n-gram weights times the scale, then the standardised dense features times
        their weights, in `CONTRIBUTION_NAMES` order): raw = bias + sum(contributions)."""
        scale = features.scale
        dense = features.dense
        raw: list[float] = []
        parts: list[list[float]] = []
        for bias, totals, terms in zip(
            self.bias, self.family_sums(features), self._dense_terms, strict=True
        ):
            contributions = [t * scale for t in totals]
            contributions += [c * v - e for (c, e), v in zip(terms, dense, strict=True)]
            raw.append(bias + sum(contributions))
            parts.append(contributions)
        return raw, parts

    def family_sums(self, features: Features) -> list[list[float]]:
        """Per boundary, the sum of the weights of each family's n-gram occurrences."""
        present = features.present
        if not present:
            return [[0.0] * len(FAMILIES) for _ in range(self.boundaries)]
        found: list[list[float]]
        if len(self._rows) == 1:  # two tiers: a 1-D take is the cheaper gather
            # (float32 weights halve the table's cache footprint; their sums stay float32 too:
            # a few thousand terms lose ~1e-6 of the score, converting them costs more)
            row = _take(self._rows[0], features.buckets)
            found = [_reduceat(row, features.starts).tolist()]
        else:
            table = self.weights.take(features.buckets, axis=1)
            found = _reduceat(table, features.starts, 1).tolist()
        if len(present) == len(FAMILIES):
            return found
        sums = [[0.0] * len(FAMILIES) for _ in range(self.boundaries)]
        for sum_row, values in zip(sums, found, strict=True):
            for i, value in zip(present, values, strict=True):
                sum_row[i] = value
        return sums

    def threshold_for_share(self, share: float) -> float:
        """The top boundary's threshold that sends about `share` of traffic to the top tier."""
        points = self.quantiles
        if not points:
            raise ValueError("the artifact records no score quantiles")
        for (s0, t0), (s1, t1) in itertools.pairwise(points):
            if s0 <= share <= s1:
                return t0 if s1 == s0 else t0 + (t1 - t0) * (share - s0) / (s1 - s0)
        return points[0][1] if share < points[0][0] else points[-1][1]


class ScoreResult(NamedTuple):
    """What a scorer step found: the tier (None: abstained) and why."""

    tier: str | None
    #: Probability at the boundary that decided, its threshold and all boundaries' probabilities.
    score: float
    threshold: float
    scores: tuple[float, ...]
    #: Up to `TOP_FEATURES` feature names that pushed most toward the outcome.
    features: tuple[str, ...]
    #: The deciding probability reached its threshold (the tier above the boundary was chosen).
    escalated: bool


TOP_FEATURES = 3


@dataclass(frozen=True, slots=True)
class ScorerStep:
    """A scorer in a classifier version: thresholds per boundary and an abstain band."""

    scorer: Scorer
    thresholds: tuple[float, ...]
    #: |p - threshold| < abstain at a boundary examined: no decision, the next rule decides.
    abstain: float = 0.0
    #: The strong share the config asked for, when the top threshold came from a budget.
    share: float | None = None

    def decide(self, messages: tuple[tuple[str, str], ...]) -> ScoreResult:
        scorer = self.scorer
        raw, parts = scorer.scored(extract(messages, scorer.bits))
        probabilities = scorer.calibrate(raw)
        tiers = scorer.tiers
        chosen, boundary, abstained = len(tiers) - 1, len(probabilities) - 1, False
        for k, (p, threshold) in enumerate(zip(probabilities, self.thresholds, strict=True)):
            if abs(p - threshold) < self.abstain:
                abstained = True
            if p < threshold:
                chosen, boundary = k, k
                break
        escalated = chosen > boundary  # the deciding probability reached its threshold
        return ScoreResult(
            tier=None if abstained else tiers[chosen],
            score=probabilities[boundary],
            threshold=self.thresholds[boundary],
            scores=probabilities,
            features=_top(parts[boundary], escalated=escalated),
            escalated=escalated,
        )


def _top(values: list[float], *, escalated: bool) -> tuple[str, ...]:
    """Names of the `TOP_FEATURES` largest contributions toward the outcome (ties: first)."""
    order = sorted(_INDEXES, key=values.__getitem__, reverse=escalated)[:TOP_FEATURES]
    sign = 1.0 if escalated else -1.0
    return tuple(CONTRIBUTION_NAMES[i] for i in order if sign * values[i] > 0)


_INDEXES = range(len(CONTRIBUTION_NAMES))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
