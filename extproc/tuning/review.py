"""The tune review: what the new version changes, measured on the held-out data (or in-sample,
said so), with the requests that change tier; and its JSON summary.

Its rendering as a report is `review_report`; writing the version into a config file is
`extproc.config.editing.render_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from extproc.config.snapshot import TextScope
from extproc.core.classify import classify, select_text
from extproc.tuning.curve import oracle_curve
from extproc.tuning.dataset import ReadStats
from extproc.tuning.evaluate import EvalResult, Evaluator, evaluate
from extproc.tuning.folds import Pooled, pooled
from extproc.tuning.metrics import CostModel
from extproc.tuning.quality import QualityReader
from extproc.tuning.report import metrics_json
from extproc.tuning.search import PGR
from extproc.tuning.tune import TuneResult

SNIPPET = 90
#: How a request's tier changes, in the order reviews list them.
EFFECTS = ("fixed", "broken", "moved")


@dataclass(frozen=True, slots=True)
class Change:
    id: str
    label: str
    before: str
    before_reason: str
    after: str
    after_reason: str
    effect: str  # "fixed", "broken" or "moved"
    text: str


@dataclass(slots=True)
class Review:
    result: TuneResult
    held_out: EvalResult
    train: EvalResult
    changes: list[Change]
    held_out_name: str

    @property
    def feasible_held_out(self) -> bool:
        metrics = self.held_out.overall[self.result.version]
        return slo_met(self.result, metrics.misroute, metrics.weak_share, metrics.strong_share)

    def out_of_fold(self) -> Pooled | None:
        """The tuned version's figures on records it was not fitted on: the K held-out folds
        pooled (cross-validation), the held-out split, or in-sample when there is neither."""
        result = self.result
        if result.folds:
            found = pooled(result.folds, f"{len(result.folds)} held-out folds, pooled")
            return self._with_oracle(found, range(len(result.records)))
        held = self.held_out
        after, before = held.overall[result.version], held.overall[result.base]
        weak = held.baselines.get(f"always-{result.snapshot.tier_names[0]}")
        if after.misroute is None or before.misroute is None or weak is None:
            return None
        found = Pooled(
            where=self.held_out_name,
            records=round(after.records),
            misroute=after.misroute,
            weak_misroute=weak.misroute or 0.0,
            before_misroute=before.misroute,
            strong_share=after.strong_share or 0.0,
            pgr=after.pgr,
            before_pgr=before.pgr,
        )
        return self._with_oracle(found, result.test)

    def _with_oracle(self, found: Pooled | None, indices: Iterable[int]) -> Pooled | None:
        if found is None or found.pgr is None:
            return found
        tiers = self.result.snapshot.tier_names
        reader = QualityReader(tiers, self.result.options.quality)
        qualities = [q for i in indices if (q := reader(self.result.records[i])) is not None]
        oracle = oracle_curve([q[tiers[0]] for q in qualities], [q[tiers[-1]] for q in qualities])
        if oracle is None:
            return found
        return dataclasses.replace(found, oracle_pgr=oracle.pgr_at(found.strong_share))

    def loses(self) -> str | None:
        """Why the version is not worth writing (it loses out of fold), with the figures."""
        oof = self.out_of_fold()
        if oof is None:
            return None
        version, weak = self.result.version, self.result.snapshot.tier_names[0]
        if self.result.options.objective.goal == PGR:
            if oof.pgr is not None and oof.pgr <= oof.random_pgr + 1e-12:
                return (
                    f"{version} recovers PGR {oof.pgr:.3f} at a {100 * oof.strong_share:.1f} % "
                    f"strong share on {oof.where}, no better than random routing at that share "
                    f"({oof.random_pgr:.3f})"
                )
            return None
        if oof.misroute > oof.weak_misroute + 1e-12:
            return (
                f"{version} misroutes {100 * oof.misroute:.1f} % on {oof.where}, more than "
                f"always-{weak} ({100 * oof.weak_misroute:.1f} %; {self.result.base}: "
                f"{100 * oof.before_misroute:.1f} %)"
            )
        return None


def slo_met(
    result: TuneResult,
    misroute: float | None,
    weak: float | None,
    strong: float | None = None,
) -> bool:
    objective = result.options.objective
    if objective.max_misroute is not None and (
        misroute is None or misroute > objective.max_misroute
    ):
        return False
    budget = objective.max_strong_share
    if budget is not None and (strong is None or strong > budget + 1e-12):
        return False
    if objective.weak_share is not None:
        low, high = objective.weak_share
        return weak is not None and low <= weak <= high
    return True


def review(
    result: TuneResult, cost_model: CostModel, by: Sequence[str] = (), include_text: bool = True
) -> Review:
    versions = [result.base, result.version]
    held = [result.records[i] for i in result.test]
    objective = result.options.objective

    def run(indices: Sequence[int], name: str, breakdown: Sequence[str]) -> EvalResult:
        evaluator = Evaluator(
            result.snapshot,
            versions,
            cost_model,
            by=breakdown,
            config_label="<tuned>",
            quality=result.options.quality,
            max_misroute=objective.max_misroute,
            weak_share=objective.weak_share,
        )
        return evaluate(
            (result.records[i] for i in indices), evaluator, name, ReadStats(records=len(indices))
        )

    name = "the held-out split" if result.mode == "holdout" else "all records (in-sample)"
    changes = []
    base, new = result.base_classifier, result.new_classifier
    for record in held:
        assert record.chat is not None
        before, after = classify(record.chat, base), classify(record.chat, new)
        if before.tier == after.tier:
            continue
        label = record.label or ""
        effect = "fixed" if after.tier == label else "broken" if before.tier == label else "moved"
        text = ""
        if include_text:
            text = " ".join(select_text(record.chat.messages, TextScope.ALL).split())
            text = text if len(text) <= SNIPPET else text[: SNIPPET - 1] + "…"
        changes.append(
            Change(
                record.id, label, before.tier, before.reason, after.tier, after.reason, effect, text
            )
        )
    changes.sort(key=by_effect)
    by = [f for f in by if f]
    return Review(
        result=result,
        held_out=run(result.test, name, by),
        train=run(result.train, "training split", ()),
        changes=changes,
        held_out_name=name,
    )


def review_json(rev: Review, written: Sequence[str]) -> dict[str, Any]:
    result = rev.result
    return {
        "base": result.base,
        "version": result.version,
        "mode": result.mode,
        "objective": dataclasses.asdict(result.options.objective),
        "feasible_train": result.fit.feasible,
        "feasible_held_out": rev.feasible_held_out,
        "records": len(result.records),
        "train": len(result.train),
        "held_out": len(result.test),
        "spec": result.spec,
        "moves": result.fit.moves,
        "held_out_figures": {n: metrics_json(m) for n, m in rev.held_out.overall.items()},
        "folds": [dataclasses.asdict(f) for f in result.folds],
        "out_of_fold": dataclasses.asdict(oof) if (oof := rev.out_of_fold()) else None,
        "loses": rev.loses(),
        "changes": [dataclasses.asdict(c) for c in rev.changes],
        "written": list(written),
    }


def by_effect(change: Change) -> int:
    """Sort key: fixed, then broken, then moved."""
    return EFFECTS.index(change.effect)
