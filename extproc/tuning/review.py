"""The tune review: rule diff, before/after figures on held-out data, requests that change tier;
and writing the new version into a config file.

Writing keeps the file as it is (comments included): the new version's YAML is inserted at the
end of the `classifiers:` block, and the result is compiled and compared with the intended
document before anything is written. When the text cannot be edited that way (e.g. a flow-style
`classifiers: {...}`), the whole document is re-serialised instead (comments are then lost, and
the caller is told). The file is replaced atomically, as the server's reload expects.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extproc.config.snapshot import TextScope, compile_config
from extproc.core.classify import classify, select_text
from extproc.core.errors import ConfigError
from extproc.tuning.dataset import ReadStats
from extproc.tuning.evaluate import EvalResult, Evaluator, evaluate
from extproc.tuning.metrics import CostModel
from extproc.tuning.report import (
    Block,
    Code,
    Figure,
    Heading,
    Para,
    Table,
    breakdown_table,
    confusion_table,
    metrics_json,
    metrics_table,
    pct,
    sweep_figure,
)
from extproc.tuning.search import THRESHOLD_KINDS
from extproc.tuning.svg import confusion_svg
from extproc.tuning.tune import TuneResult

MAX_EXAMPLES = 30
SNIPPET = 90


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
        return slo_met(self.result, metrics.misroute, metrics.weak_share)


def slo_met(result: TuneResult, misroute: float | None, weak: float | None) -> bool:
    objective = result.options.objective
    if objective.max_misroute is not None and (
        misroute is None or misroute > objective.max_misroute
    ):
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

    def run(indices: Sequence[int], name: str, breakdown: Sequence[str]) -> EvalResult:
        evaluator = Evaluator(
            result.snapshot, versions, cost_model, by=breakdown, config_label="<tuned>"
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
    order = {"fixed": 0, "broken": 1, "moved": 2}
    changes.sort(key=lambda c: order[c.effect])
    by = [f for f in by if f]
    return Review(
        result=result,
        held_out=run(result.test, name, by),
        train=run(result.train, "training split", ()),
        changes=changes,
        held_out_name=name,
    )


class _Dumper(yaml.SafeDumper):
    """Indents block sequences under their key, as the packaged config does."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def dump_yaml(data: object) -> str:
    return yaml.dump(
        data,
        Dumper=_Dumper,
        allow_unicode=True,
        sort_keys=False,
        default_flow_style=None,
        width=88,
    )


def spec_yaml(version: str, spec: dict[str, Any]) -> str:
    return dump_yaml({version: spec})


def rule_changes(result: TuneResult) -> Table:
    before, after = result.base_params, result.params
    rows = []
    if before.scope != after.scope:
        rows.append(["text scope", before.scope, after.scope])
    added = [w for w in after.keywords if w not in before.keywords]
    removed = [w for w in before.keywords if w not in after.keywords]
    if added:
        rows.append(["keywords added", "", ", ".join(added)])
    if removed:
        rows.append(["keywords removed", ", ".join(removed), ""])
    for kind in THRESHOLD_KINDS:
        old, new = before.gt(kind), after.gt(kind)
        if old != new:
            rows.append(
                [
                    f"{kind} rule",
                    "off" if old is None else f"> {old}",
                    "off" if new is None else f"> {new}",
                ]
            )
    if not rows:
        rows.append(["(no change)", "", ""])
    return Table(["change", result.base, result.version], rows)


def review_blocks(rev: Review) -> list[Block]:
    result = rev.result
    tiers = result.snapshot.tier_names
    options = result.options
    held = rev.held_out
    before, after = held.overall[result.base], held.overall[result.version]
    split = {
        "holdout": f"hold-out: fitted on {len(result.train):,} records, figures on the other "
        f"{len(result.test):,} ({options.holdout:.0%}, seed {options.seed})",
        "cv": f"{len(result.folds)}-fold cross-validation (seed {options.seed}); the version "
        f"written was fitted on all {len(result.records):,} records",
        "in-sample": "no hold-out (--holdout 0): every figure is in-sample",
    }[result.mode]
    verdict = "met" if result.fit.feasible else "NOT met"
    held_verdict = "met" if rev.feasible_held_out else "NOT met"
    data = options.source or "labelled records"
    blocks: list[Block] = [
        Heading(f"cascade tune: {result.base} -> {result.version}", 1),
        Para(
            f"Data: {data}, {len(result.records):,} labelled records with text; {split}. "
            f"{options.objective.describe()}. SLO on the training data: {verdict}; on "
            f"{rev.held_out_name}: {held_verdict}."
        ),
        Heading("Rule changes"),
        rule_changes(result),
        Code(_diff(result), "diff"),
        Heading(f"Before / after on {rev.held_out_name} ({count_text(held)})"),
        metrics_table([before, after, *held.baselines.values()], tiers),
    ]
    blocks += [Para(f"Note: {note}.") for note in held.notes]
    if result.folds:
        blocks += [Heading("Cross-validation (held-out fold figures)"), _folds_table(result)]
    train_before, train_after = rev.train.overall[result.base], rev.train.overall[result.version]
    if result.mode == "holdout":
        blocks += [
            Heading("Training split (what the search saw)"),
            Table(
                ["", result.base, result.version],
                [
                    ["misroute", pct(train_before.misroute), pct(train_after.misroute)],
                    [
                        f"{tiers[0]} share",
                        pct(train_before.weak_share),
                        pct(train_after.weak_share),
                    ],
                ],
            ),
        ]
    blocks.append(Heading("Confusion matrices (rows: label, columns: decision)"))
    for metrics in (before, after):
        blocks += [
            Para(f"`{metrics.name}`"),
            confusion_table(metrics),
            Figure(
                f"confusion-{metrics.name}",
                metrics.name,
                confusion_svg(metrics.name, tiers, metrics.confusion),
            ),
        ]
    if held.sweeps:
        blocks.append(Heading(f"{tiers[-1]} share vs quality"))
        blocks.append(sweep_figure(held, list(held.sweeps.values())))
    for field_name, groups in held.breakdowns.items():
        blocks += [
            Heading(f"By {field_name}"),
            breakdown_table(groups, [result.base, result.version], tiers),
        ]
    blocks += _change_blocks(rev)
    blocks += [
        Heading("Search path (training split)"),
        Code("\n".join(result.fit.moves) or "(no move improved the score)"),
    ]
    return blocks


def count_text(result: EvalResult) -> str:
    first = next(iter(result.overall.values()))
    return f"{first.records:,.0f} records"


def _diff(result: TuneResult) -> str:
    old = spec_yaml(result.base, {k: v for k, v in result.base_spec.items() if k != "description"})
    new = spec_yaml(result.version, {k: v for k, v in result.spec.items() if k != "description"})
    lines = difflib.unified_diff(
        old.splitlines(), new.splitlines(), result.base, result.version, lineterm="", n=2
    )
    return "\n".join(lines) or "(identical rules)"


def _folds_table(result: TuneResult) -> Table:
    rows = [
        [
            str(f.fold),
            f"{f.records:,}",
            pct(f.before_misroute),
            pct(f.after_misroute),
            pct(f.before_weak),
            pct(f.after_weak),
        ]
        for f in result.folds
    ]
    if result.folds:
        size = len(result.folds)
        rows.append(
            [
                "mean",
                "",
                pct(sum(f.before_misroute for f in result.folds) / size),
                pct(sum(f.after_misroute for f in result.folds) / size),
                pct(sum(f.before_weak for f in result.folds) / size),
                pct(sum(f.after_weak for f in result.folds) / size),
            ]
        )
    weak = result.snapshot.tier_names[0]
    return Table(
        ["fold", "records", "misroute before", "misroute after", f"{weak} before", f"{weak} after"],
        rows,
    )


def _change_blocks(rev: Review) -> list[Block]:
    changes = rev.changes
    counts = {e: sum(c.effect == e for c in changes) for e in ("fixed", "broken", "moved")}
    shown = pick_examples(changes, MAX_EXAMPLES)
    blocks: list[Block] = [
        Heading(f"Requests that change tier ({rev.held_out_name})"),
        Para(
            f"{len(changes):,} change tier: {counts['fixed']:,} fixed (now as labelled), "
            f"{counts['broken']:,} broken (were as labelled), {counts['moved']:,} moved between "
            f"two wrong tiers. Shown: {len(shown)}, as many fixed as broken where there are both."
        ),
    ]
    if changes:
        rows = [
            [
                c.id,
                c.label,
                f"{c.before} ({c.before_reason})",
                f"{c.after} ({c.after_reason})",
                c.effect,
                c.text,
            ]
            for c in shown
        ]
        blocks.append(
            Table(["id", "label", rev.result.base, rev.result.version, "effect", "text"], rows)
        )
    return blocks


def pick_examples(changes: Sequence[Change], limit: int) -> list[Change]:
    """Up to `limit` changes, split evenly between fixed, broken and moved when possible."""
    groups = [[c for c in changes if c.effect == e] for e in ("fixed", "broken", "moved")]
    picked: list[Change] = []
    index = 0
    while len(picked) < limit and any(index < len(g) for g in groups):
        picked += [g[index] for g in groups if index < len(g)][: limit - len(picked)]
        index += 1
    order = {"fixed": 0, "broken": 1, "moved": 2}
    return sorted(picked, key=lambda c: order[c.effect])


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
        "changes": [dataclasses.asdict(c) for c in rev.changes],
        "written": list(written),
    }


# ---------------------------------------------------------------------------------------------
# writing the config

_CLASSIFIERS = re.compile(r"^classifiers:[ \t]*(#.*)?$")


def insert_version(text: str, version: str, spec: dict[str, Any]) -> str | None:
    """The config text with the version added at the end of `classifiers:`, or None."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if _CLASSIFIERS.match(line)), None)
    if start is None:
        return None
    end = len(lines)
    indent = None
    for index in range(start + 1, len(lines)):
        line = lines[index]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line[0].isspace():
            end = index
            break
        if indent is None:
            indent = len(line) - len(line.lstrip(" "))
    if not indent:
        return None
    cut = end
    while cut > start + 1 and (not lines[cut - 1].strip() or lines[cut - 1].startswith("#")):
        cut -= 1
    block = [
        " " * indent + line if line else line for line in spec_yaml(version, spec).splitlines()
    ]
    merged = [*lines[:cut], "", *block, *lines[cut:]]
    return "\n".join(merged) + "\n"


def render_config(text: str, source: str, version: str, spec: dict[str, Any]) -> tuple[str, bool]:
    """(new config text, whether comments and layout were kept). Raises ConfigError."""
    original = compile_config(text, source)
    expected = dict(original.raw)
    expected["classifiers"] = {**original.raw["classifiers"], version: spec}
    edited = insert_version(text, version, spec)
    if edited is not None:
        try:
            if compile_config(edited, source).raw == expected:
                return edited, True
        except ConfigError:
            pass
    dumped = dump_yaml(expected)
    compile_config(dumped, source)
    return dumped, False


def write_atomically(path: Path, text: str) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
