"""`cascade train`: fit the learned scorer on labelled records and write its artifact.

The features are `extproc.core.features.extract` (the server's own code). For tiers t0 < ... < tn
a label names the cheapest sufficient tier; boundary k is the binary question "is the label above
tk?", one L2-regularised logistic regression per boundary (scikit-learn: L-BFGS, or SGD on the
same loss when the design matrix is large), fitted on hashed n-gram weights plus the standardised
dense features.

Out-of-fold scores come from K-fold cross-validation grouped by a key (`group_by`, else the first
of `GROUP_FIELDS` the records have, else one group per record): a group's records are always in
the same fold. Platt's calibration (a, b) is fitted on the out-of-fold scores; the shipped model
of a boundary is the mean of its K fold models (a linear model too, on the scale the calibration
was measured on). The top boundary's out-of-fold calibrated probabilities give the score quantiles
recorded in the artifact, from which a target strong share becomes a threshold. Everything random
is seeded.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse  # type: ignore[import-untyped]
from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]
from sklearn.linear_model import (  # type: ignore[import-untyped]
    LogisticRegression,
    SGDClassifier,
)

from extproc.config.artifacts import FORMAT, FORMAT_VERSION, dump_artifact, encode_weights
from extproc.core.features import DENSE_NAMES, FAMILIES, HEAD, TAIL, extract
from extproc.tuning.dataset import Record

#: Record fields that identify a conversation or a user, tried in order for grouped folds.
GROUP_FIELDS = ("conversation_id", "session_id", "user_id", "user")
#: Above this many stored values the fit switches from liblinear's dual coordinate descent to
#: SGD (same loss): the first converges in seconds on a few thousand records, the second scales.
SGD_ABOVE_NNZ = 2_500_000
SHARE_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))

FloatArray = npt.NDArray[np.float64]


class TrainError(ValueError):
    """The records cannot train a scorer (too few, one class only, ...)."""


@dataclass(frozen=True, slots=True)
class TrainOptions:
    seed: int = 0
    folds: int = 5
    group_by: str | None = None
    target_share: float | None = None
    threshold: float | None = None
    bits: int = 18
    c: float = 1.0
    solver: str = "auto"  # auto | liblinear | sgd


@dataclass(slots=True)
class Design:
    """Featurised records: hashed n-grams, dense features, ordinal labels, groups."""

    hashed: sparse.csr_matrix
    dense: FloatArray
    ranks: npt.NDArray[np.intp]
    groups: list[str]
    group_field: str | None
    chars: FloatArray  # user text characters, for the length-only baseline


@dataclass(slots=True)
class Fitted:
    """One boundary's linear model."""

    hashed: npt.NDArray[np.float32]
    dense: FloatArray
    bias: float


@dataclass(slots=True)
class Trained:
    tiers: tuple[str, ...]
    options: TrainOptions
    solver: str
    folds: npt.NDArray[np.intp]
    #: out-of-fold calibrated probabilities, (records, boundaries), non-increasing per row
    oof: FloatArray
    thresholds: tuple[float, ...]
    document: dict[str, Any]
    design: Design
    notes: list[str] = field(default_factory=list)

    def decisions(self) -> npt.NDArray[np.intp]:
        return route(self.oof, self.thresholds)


def group_keys(records: Sequence[Record], name: str | None) -> tuple[list[str], str | None]:
    """Each record's group and the field used (None: one group per record)."""
    candidates = [name] if name else list(GROUP_FIELDS)
    for candidate in candidates:
        values = [record.get(candidate) for record in records]
        if any(v is not None and v != "" for v in values):
            keys = [
                f"={v}" if v is not None and v != "" else f"#{r.index}"
                for v, r in zip(values, records, strict=True)
            ]
            return keys, candidate
    if name:
        raise TrainError(f"no record has a {name!r} field to group by")
    return [f"#{r.index}" for r in records], None


def assign_folds(groups: Sequence[str], folds: int, seed: int) -> npt.NDArray[np.intp]:
    """A fold per record, groups kept whole, folds balanced by size (seeded)."""
    order: dict[str, list[int]] = {}
    for index, key in enumerate(groups):
        order.setdefault(key, []).append(index)
    keys = sorted(order, key=lambda k: hashlib.blake2b(f"{seed}:{k}".encode()).digest())
    keys.sort(key=lambda k: -len(order[k]))  # stable: big groups first, ties in seeded order
    sizes = [0] * folds
    result = np.empty(len(groups), dtype=np.intp)
    for key in keys:
        target = min(range(folds), key=lambda f: (sizes[f], f))
        sizes[target] += len(order[key])
        result[order[key]] = target
    return result


def featurize(
    records: Sequence[Record], tiers: Sequence[str], bits: int, group_by: str | None = None
) -> Design:
    buckets: list[npt.NDArray[np.intp]] = []
    scales: list[float] = []
    dense_rows: list[tuple[float, ...]] = []
    ranks_list: list[int] = []
    rank_of = {tier: rank for rank, tier in enumerate(tiers)}
    for record in records:
        if record.chat is None or record.label not in rank_of:
            raise TrainError(f"record {record.id!r} has no text or no tier label")
        features = extract(record.chat.messages, bits)
        buckets.append(features.buckets)
        scales.append(features.scale)
        dense_rows.append(features.dense)
        ranks_list.append(rank_of[record.label])
    dense = np.array(dense_rows, dtype=np.float64).reshape(len(records), len(DENSE_NAMES))
    chars = np.expm1(dense[:, 0])
    ranks = np.array(ranks_list, dtype=np.intp)
    lengths = np.array([len(b) for b in buckets], dtype=np.int64)
    indptr = np.concatenate(([0], np.cumsum(lengths)))
    hashed = sparse.csr_matrix(
        (
            np.repeat(np.array(scales), lengths) if buckets else np.empty(0),
            np.concatenate(buckets) if buckets else np.empty(0, dtype=np.intp),
            indptr,
        ),
        shape=(len(records), 1 << bits),
    )
    hashed.sum_duplicates()
    groups, used = group_keys(records, group_by)
    return Design(hashed, dense, ranks, groups, used, chars)


def standardization(dense: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Mean and standard deviation per dense feature (1 where a feature is constant)."""
    mean = dense.mean(axis=0)
    std = dense.std(axis=0)
    return mean, np.where(std > 1e-9, std, 1.0)


def design_matrix(design: Design, mean: FloatArray, std: FloatArray) -> sparse.csr_matrix:
    standard = sparse.csr_matrix((design.dense - mean) / std)
    return sparse.hstack([design.hashed, standard], format="csr")


def choose_solver(matrix: sparse.csr_matrix, requested: str) -> str:
    if requested != "auto":
        return requested
    return "sgd" if matrix.nnz > SGD_ABOVE_NNZ else "liblinear"


def fit_boundary(
    matrix: sparse.csr_matrix, positive: npt.NDArray[np.bool_], options: TrainOptions, solver: str
) -> Fitted:
    """An L2-regularised logistic regression (C = options.c) of `positive` on the rows."""
    buckets = 1 << options.bits
    if positive.all() or not positive.any():
        rate = (positive.sum() + 0.5) / (len(positive) + 1.0)
        return Fitted(np.zeros(buckets, np.float32), np.zeros(len(DENSE_NAMES)), _logit(rate))
    model: LogisticRegression | SGDClassifier
    if solver == "sgd":
        model = SGDClassifier(
            loss="log_loss",
            alpha=1.0 / (options.c * matrix.shape[0]),
            max_iter=6,
            tol=None,
            random_state=options.seed,
            average=True,
        )
    else:
        model = LogisticRegression(
            C=options.c, solver="liblinear", dual=True, max_iter=200, random_state=options.seed
        )
    with warnings.catch_warnings():
        # a capped number of passes is a choice here, not a failure
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(matrix, positive)
    coef = np.asarray(model.coef_[0], dtype=np.float64)
    return Fitted(coef[:buckets].astype(np.float32), coef[buckets:], float(model.intercept_[0]))


def raw_scores(matrix: sparse.csr_matrix, fitted: Fitted) -> FloatArray:
    weights = np.concatenate([fitted.hashed.astype(np.float64), fitted.dense])
    scores: FloatArray = matrix @ weights + fitted.bias
    return scores


def platt(raw: FloatArray, positive: npt.NDArray[np.bool_]) -> tuple[float, float]:
    """(a, b) of p = 1 / (1 + exp(-(a * raw + b))), by maximum likelihood; a > 0."""
    if positive.all() or not positive.any():
        return 1.0, 0.0
    model = LogisticRegression(C=1e6, max_iter=1000)
    model.fit(raw.reshape(-1, 1), positive)
    a, b = float(model.coef_[0][0]), float(model.intercept_[0])
    return (a, b) if a > 1e-6 else (1e-6, b)


def calibrated(raw: FloatArray, a: float, b: float) -> FloatArray:
    result: FloatArray = 1.0 / (1.0 + np.exp(-(a * raw + b)))
    return result


def route(probabilities: FloatArray, thresholds: Sequence[float]) -> npt.NDArray[np.intp]:
    """The tier rank each row goes to: the first boundary under its threshold, else the top."""
    below = probabilities < np.asarray(thresholds)
    first = np.argmax(below, axis=1)
    result: npt.NDArray[np.intp] = np.where(below.any(axis=1), first, probabilities.shape[1])
    return result


def quantiles(top: FloatArray) -> list[tuple[float, float]]:
    """(share, threshold): sending p >= threshold to the top tier gives about that share."""
    pairs = []
    for share in SHARE_GRID:
        threshold = float(np.quantile(top, 1.0 - share, method="lower")) if len(top) else 0.5
        pairs.append((share, min(max(threshold, 1e-6), 1 - 1e-6)))
    return pairs


def share_threshold(pairs: Sequence[tuple[float, float]], share: float) -> float:
    for (s0, t0), (s1, t1) in itertools.pairwise(pairs):
        if s0 <= share <= s1:
            return t0 + (t1 - t0) * (share - s0) / (s1 - s0)
    return pairs[0][1] if share < pairs[0][0] else pairs[-1][1]


@dataclass(slots=True)
class CrossValidated:
    raw: FloatArray  # out-of-fold raw scores, (records, boundaries)
    models: list[Fitted]  # per boundary: the mean of the fold models
    solver: str
    mean: FloatArray
    std: FloatArray


def cross_validate(
    design: Design, tiers: Sequence[str], options: TrainOptions, folds: npt.NDArray[np.intp]
) -> CrossValidated:
    """Out-of-fold raw scores and, per boundary, the average of the fold models.

    The average of linear models is a linear model. Shipping it rather than a refit on every
    record keeps the served scores on the scale the calibration and the quantiles were measured
    on (models fitted on (K-1)/K of the records), so a budget holds on new traffic.
    """
    mean, std = standardization(design.dense)
    matrix = design_matrix(design, mean, std)
    solver = choose_solver(matrix, options.solver)
    boundaries = len(tiers) - 1
    raw = np.zeros((matrix.shape[0], boundaries))
    sums = [
        Fitted(np.zeros(1 << options.bits, np.float32), np.zeros(len(DENSE_NAMES)), 0.0)
        for _ in range(boundaries)
    ]
    used = 0
    for fold in range(options.folds):
        test = folds == fold
        if not test.any():
            continue
        used += 1
        train_rows = matrix[~test]
        for k in range(boundaries):
            fitted = fit_boundary(train_rows, design.ranks[~test] > k, options, solver)
            raw[test, k] = raw_scores(matrix[test], fitted)
            sums[k].hashed += fitted.hashed
            sums[k].dense += fitted.dense
            sums[k].bias += fitted.bias
    models = [
        Fitted((m.hashed / used).astype(np.float32), m.dense / used, m.bias / used) for m in sums
    ]
    return CrossValidated(raw, models, solver, mean, std)


def train(records: Sequence[Record], tiers: Sequence[str], options: TrainOptions) -> Trained:
    """Cross-validate and calibrate; the artifact document is in the result."""
    if len(tiers) < 2:
        raise TrainError("a scorer needs two or more tiers")
    if options.folds < 2:
        raise TrainError("--folds must be 2 or more")
    design = featurize(records, tiers, options.bits, options.group_by)
    groups = len(set(design.groups))
    if groups < options.folds:
        raise TrainError(f"{groups} groups cannot make {options.folds} folds")
    if len(set(design.ranks.tolist())) < 2:
        raise TrainError("every record has the same label: there is nothing to learn")
    folds = assign_folds(design.groups, options.folds, options.seed)
    cv = cross_validate(design, tiers, options, folds)
    raw, solver, mean, std = cv.raw, cv.solver, cv.mean, cv.std
    boundaries = len(tiers) - 1
    calibration = [platt(raw[:, k], design.ranks > k) for k in range(boundaries)]
    oof = np.column_stack([calibrated(raw[:, k], *calibration[k]) for k in range(boundaries)])
    oof = np.minimum.accumulate(oof, axis=1)
    pairs = quantiles(oof[:, -1])
    thresholds = [options.threshold or 0.5] * boundaries
    if options.target_share is not None:
        thresholds[-1] = share_threshold(pairs, options.target_share)
    entries = []
    for k, fitted in enumerate(cv.models):
        text, digest = encode_weights(fitted.hashed)
        entries.append(
            {
                "above": tiers[k],
                "bias": fitted.bias,
                "dense": [float(x) for x in fitted.dense],
                "platt": list(calibration[k]),
                "threshold": thresholds[k],
                "weights": text,
                "weights_sha256": digest,
            }
        )
    counts = {t: int((design.ranks == i).sum()) for i, t in enumerate(tiers)}
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tiers": list(tiers),
        "features": {
            "bits": options.bits,
            "head": HEAD,
            "tail": TAIL,
            "families": list(FAMILIES),
            "dense": list(DENSE_NAMES),
        },
        "standardize": {"mean": [float(x) for x in mean], "std": [float(x) for x in std]},
        "boundaries": entries,
        "quantiles": [list(p) for p in pairs],
        "training": {
            "records": len(records),
            "labels": counts,
            "seed": options.seed,
            "folds": options.folds,
            "group_by": design.group_field,
            "solver": solver,
            "c": options.c,
            "target_share": options.target_share,
        },
    }
    return Trained(
        tiers=tuple(tiers),
        options=options,
        solver=solver,
        folds=folds,
        oof=oof,
        thresholds=tuple(thresholds),
        document=document,
        design=design,
    )


def artifact_bytes(trained: Trained) -> bytes:
    """The artifact file's content (validated by the same parser the server uses)."""
    return dump_artifact(trained.document)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))
