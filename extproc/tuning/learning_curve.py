"""How the scorer's out-of-fold figures grow with the number of labels.

For each size n (100, 300, 1,000, 3,000, ...) smaller than a training fold, and every fold, n
records are drawn (seeded) from the fold's training part, the top boundary ("needs the top tier")
is fitted on them and scored on the fold's held-out part, which is never sampled from. Every
record thus gets an out-of-fold score per size; the figures of a size are computed over all of
them: ROC AUC of the top tier, APGR (when the records carry per-tier quality) and the misroute
at the scorer's operating strong share (the records scoring highest go to the top tier).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from extproc.tuning.curve import score_curve
from extproc.tuning.train import (
    Design,
    FloatArray,
    TrainOptions,
    choose_solver,
    design_matrix,
    fit_boundary,
    raw_scores,
    standardization,
)

SIZES = (100, 300, 1000, 3000, 10_000, 30_000, 100_000)


@dataclass(frozen=True, slots=True)
class CurveRow:
    labels: int  # training records per fold
    auc: float | None
    apgr: float | None
    misroute: float | None


def roc_auc(scores: FloatArray, positive: npt.NDArray[np.bool_]) -> float | None:
    """Probability that a positive scores above a negative (ties count one half)."""
    pos, neg = int(positive.sum()), int((~positive).sum())
    if not pos or not neg:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def misroute_at_share(
    scores: FloatArray, ranks: npt.NDArray[np.intp], top: int, share: float
) -> float | None:
    """Two-way misroute when the `share` highest scores go to the top tier, the rest to the
    cheapest (for more tiers: a record is right when its tier is the one it was sent to)."""
    if not len(scores):
        return None
    count = round(share * len(scores))
    order = np.argsort(-scores, kind="mergesort")
    sent = np.zeros(len(scores), dtype=np.intp)
    sent[order[:count]] = top
    return float((sent != ranks).mean())


def apgr_of(
    scores: FloatArray, quality: tuple[Sequence[float], Sequence[float]] | None
) -> float | None:
    if quality is None:
        return None
    curve = score_curve(scores.tolist(), quality[0], quality[1])
    return curve.apgr if curve is not None else None


def learning_curve(
    design: Design,
    folds: npt.NDArray[np.intp],
    options: TrainOptions,
    share: float,
    quality: tuple[Sequence[float], Sequence[float]] | None,
    sizes: Sequence[int] = SIZES,
) -> list[CurveRow]:
    """One row per size smaller than the smallest training fold."""
    mean, std = standardization(design.dense)
    matrix = design_matrix(design, mean, std)
    top = int(design.ranks.max()) if len(design.ranks) else 0
    positive = design.ranks >= top
    train_sizes = [int((folds != f).sum()) for f in range(options.folds)]
    rng = np.random.default_rng(options.seed)
    tests = [folds == fold for fold in range(options.folds)]
    pools = [np.flatnonzero(~test) for test in tests]
    held_out = [matrix[test] for test in tests]  # sliced once, scored at every size
    rows = []
    for size in sizes:
        if size >= min(train_sizes):
            break
        scores = np.zeros(len(folds))
        for fold in range(options.folds):
            chosen = np.sort(rng.choice(pools[fold], size=size, replace=False))
            part = matrix[chosen]
            solver = choose_solver(part, options.solver)
            fitted = fit_boundary(part, positive[chosen], options, solver)
            scores[tests[fold]] = raw_scores(held_out[fold], fitted)
        rows.append(
            CurveRow(
                labels=size,
                auc=roc_auc(scores, positive),
                apgr=apgr_of(scores, quality),
                misroute=misroute_at_share(scores, design.ranks, top, share),
            )
        )
    return rows
