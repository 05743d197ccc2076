"""`cascade tune`: fit a new classifier version to labelled data, with honest held-out figures.

Validation, by the options:

- hold-out (default, `holdout=0.3`): a seeded 30 % of the records (by `blake2b(seed, id)`, so the
  split does not depend on file order) is kept out of the search, mining included; the written
  version is the one fitted on the other 70 % and the review shows it on the held-out part;
- cross-validation (`folds=K`): the search runs K times, each time on K-1 folds with the K-th held
  out; the review shows the K held-out figures, and the written version is fitted on all records;
- neither (`holdout=0`): in-sample only, said so in the review.

The search itself is in `search` (over `features`); this module mines keyword candidates, runs
the search per text scope, builds the winner as a config document, and re-checks it with
`classify()`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extproc.config.snapshot import Classifier, Snapshot, TextScope, compile_document
from extproc.core.classify import classify, select_text
from extproc.tuning.candidates import Example, mine_terms
from extproc.tuning.dataset import Record
from extproc.tuning.features import (
    DEFAULT_NAMES,
    SCOPES,
    THRESHOLD_KINDS,
    Features,
    Params,
    Shape,
    TuneError,
    analyse,
    features,
)
from extproc.tuning.folds import FoldFigures, fold_figures, splits
from extproc.tuning.quality import DEFAULT_QUALITY, QualityReader, QualitySpec
from extproc.tuning.search import PGR, Objective, SearchResult, pool_for, search
from extproc.tuning.variants import variant_document, version_spec


@dataclass(frozen=True, slots=True)
class TuneOptions:
    objective: Objective = field(default_factory=Objective)
    holdout: float = 0.3
    folds: int = 0
    seed: int = 0
    min_count: int = 5
    min_gain: int = 3
    max_new_keywords: int = 30
    scopes: tuple[str, ...] = SCOPES
    langs: frozenset[str] | None = None
    version: str | None = None
    source: str = ""
    #: records sharing this field's value stay in one fold (conversation_id, user, ...)
    group_by: str | None = None
    quality: QualitySpec = DEFAULT_QUALITY


@dataclass(slots=True)
class TuneResult:
    base: str
    version: str
    shape: Shape
    base_params: Params
    params: Params
    base_spec: dict[str, Any]
    spec: dict[str, Any]
    #: compiled document holding the base version and the new one (for evaluation)
    snapshot: Snapshot
    records: list[Record]
    train: list[int]
    test: list[int]
    mode: str  # "holdout", "cv" or "in-sample"
    fit: SearchResult
    folds: list[FoldFigures]
    pool: int
    options: TuneOptions
    #: per threshold kind of the tuned version: share of the labelled requests above it
    shares_above: dict[str, float] = field(default_factory=dict)

    @property
    def new_classifier(self) -> Classifier:
        return self.snapshot.classifiers[self.version]

    @property
    def base_classifier(self) -> Classifier:
        return self.snapshot.classifiers[self.base]


def next_version(snapshot: Snapshot, base: str) -> str:
    """`v7` -> `v8` (one past the highest `v<n>`), else `<base>-tuned`."""
    match = re.fullmatch(r"(.*?)(\d+)", base)
    if match:
        prefix = match.group(1)
        numbers = [
            int(m.group(1))
            for v in snapshot.classifiers
            if (m := re.fullmatch(re.escape(prefix) + r"(\d+)", v))
        ]
        return f"{prefix}{max(numbers) + 1}"
    name = f"{base}-tuned"
    suffix = 2
    while name in snapshot.classifiers:
        name, suffix = f"{base}-tuned{suffix}", suffix + 1
    return name


def labelled_examples(
    records: Sequence[Record],
    target: str,
    default: str | None = None,
    qualities: Sequence[Mapping[str, float] | None] = (),
) -> list[Example]:
    """Records as the search sees them: labelled target or default (or another tier), and the
    quality the target tier's model gains over the default's on each (0 when unknown)."""
    examples = []
    for index, record in enumerate(records):
        assert record.chat is not None and record.label is not None
        quality = qualities[index] if index < len(qualities) else None
        gain = quality[target] - quality[default] if quality and default else 0.0
        default_ok = None if default is None else record.label == default
        examples.append(Example(record.chat, record.label == target, default_ok, gain))
    return examples


def tune(
    snapshot: Snapshot, base: str, records: Sequence[Record], options: TuneOptions
) -> TuneResult:
    """Records must have text and a label that is a tier name."""
    shape, base_params = analyse(snapshot, base)
    if not records:
        raise TuneError("no labelled record with text to tune on")
    records = list(records)
    reader = QualityReader(snapshot.tier_names, options.quality)
    qualities = [reader(r) for r in records]
    if options.objective.goal == PGR and not any(qualities):
        raise TuneError(
            f"--objective pgr needs per-tier quality on the records ({options.quality.describe()}"
            " found on none; see --quality-field)"
        )
    examples = labelled_examples(records, shape.target, shape.default, qualities)
    everything = (1 << len(records)) - 1
    mode, train, test, folds = splits(
        records, options.holdout, options.folds, options.seed, options.group_by
    )
    if train & everything == 0:
        raise TuneError("the training split is empty: use fewer held-out records")
    texts = [select_text(e.chat.messages, TextScope.ALL) for e in examples]
    fits = [train] + [everything & ~f for f in folds]
    mined = [_mine(examples, texts, m, options) for m in fits]
    words = list(dict.fromkeys([*base_params.keywords, *(w for ws in mined for w in ws)]))
    scopes = [base_params.scope, *(s for s in options.scopes if s != base_params.scope)]
    data = {s: features(snapshot, shape, s, examples, words, base_params) for s in scopes}
    fit = _best(data, train, base_params, mined[0], options, scopes)
    version = options.version or next_version(snapshot, base)
    if version in snapshot.classifiers:
        raise TuneError(f"version {version!r} already exists in the config")
    base_spec = version_spec(snapshot, base)
    described = _description(base, train.bit_count(), len(records), options)
    spec = build_spec(base_spec, shape, fit.state.params, described)
    compiled = compile_document(
        variant_document(snapshot, {base: base_spec, version: spec}), "<tuned>"
    )
    _verify(
        compiled.classifiers[version], shape.target, examples, data[fit.state.params.scope], fit
    )
    held_out = [
        _fold_run(
            snapshot,
            shape,
            (records, examples, qualities),
            data,
            (base, base_spec),
            held,
            fits[i + 1],
            mined[i + 1],
            i,
            options,
            scopes,
        )
        for i, held in enumerate(folds)
    ]
    chosen = data[fit.state.params.scope]
    shares_above = {
        kind: sum(v > gt for v in chosen.values[kind]) / len(records)
        for kind, gt in fit.state.params.gts
        if gt is not None
    }
    return TuneResult(
        shares_above=shares_above,
        base=base,
        version=version,
        shape=shape,
        base_params=base_params,
        params=fit.state.params,
        base_spec=base_spec,
        spec=spec,
        snapshot=compiled,
        records=records,
        train=_indices(train, len(records)),
        test=_indices(test, len(records)),
        mode=mode,
        fit=fit,
        folds=held_out,
        pool=len(mined[0]),
        options=options,
    )


def _indices(mask: int, size: int) -> list[int]:
    return [i for i in range(size) if mask >> i & 1]


def _mine(
    examples: Sequence[Example], texts: Sequence[str], subset: int, options: TuneOptions
) -> list[str]:
    chosen = [
        t
        for i, (e, t) in enumerate(zip(examples, texts, strict=True))
        if subset >> i & 1 and e.positive
    ]
    return mine_terms(chosen, options.min_count, options.langs)


def _best(
    data: dict[str, Features],
    subset: int,
    base: Params,
    mined: Sequence[str],
    options: TuneOptions,
    scopes: Sequence[str],
) -> SearchResult:
    best: SearchResult | None = None
    for scope in scopes:
        start = Params(scope, base.keywords, base.gts)
        pool = pool_for(data[scope], subset, mined, options.min_count)
        found = search(
            data[scope],
            subset,
            start,
            pool,
            options.objective,
            min_gain=options.min_gain,
            max_new_keywords=options.max_new_keywords,
        )
        if best is None or found.state.score < best.state.score:
            best = found
    assert best is not None
    return best


def _verify(
    classifier: Classifier,
    target: str,
    examples: Sequence[Example],
    data: Features,
    fit: SearchResult,
) -> None:
    predicted = data.predict(fit.state.params)
    wrong = [
        i
        for i, e in enumerate(examples)
        if (classify(e.chat, classifier).tier == target) != bool(predicted >> i & 1)
    ]
    if wrong:
        raise TuneError(
            f"internal error: the search's model of the rules disagrees with classify() on "
            f"{len(wrong)} records (first: #{wrong[0] + 1}); please report it"
        )


def _fold_run(
    snapshot: Snapshot,
    shape: Shape,
    labelled: tuple[Sequence[Record], Sequence[Example], Sequence[Mapping[str, float] | None]],
    data: dict[str, Features],
    base: tuple[str, dict[str, Any]],
    held: int,
    train: int,
    mined: Sequence[str],
    index: int,
    options: TuneOptions,
    scopes: Sequence[str],
) -> FoldFigures:
    records, _examples, qualities = labelled
    base_params = analyse(snapshot, base[0])[1]
    found = _best(data, train, base_params, mined, options, scopes)
    spec = build_spec(base[1], shape, found.state.params, "")
    compiled = compile_document(
        variant_document(snapshot, {base[0]: base[1], "fold": spec}), "<fold>"
    )
    return fold_figures(
        index,
        held,
        records,
        qualities,
        snapshot.tier_names,
        compiled.classifiers[base[0]],
        compiled.classifiers["fold"],
        found.feasible,
    )


def _description(base: str, fitted: int, total: int, options: TuneOptions) -> str:
    source = f" on {options.source}" if options.source else ""
    return (
        f"Tuned by cascade tune from {base}{source}: fitted on {fitted} of {total} labelled "
        f"records (seed {options.seed}). {options.objective.describe()}."
    )


def build_spec(
    base_spec: dict[str, Any], shape: Shape, params: Params, description: str
) -> dict[str, Any]:
    """The base version's YAML mapping with the tuned scope, keywords and thresholds."""
    spec = copy.deepcopy(base_spec)
    if description:
        spec = {"description": description, **{k: v for k, v in spec.items() if k != "description"}}
    spec["text"] = params.scope
    rules: list[dict[str, Any]] = spec.setdefault("rules", [])
    names = {str(r.get("name", r["kind"])) for r in rules}
    if shape.keyword_index is not None:
        rule = rules[shape.keyword_index]
        if params.keywords:
            rule["keywords"] = list(params.keywords)
            rule.pop("enabled", None)
        else:
            rule["enabled"] = False
    elif params.keywords:
        name = _fresh(DEFAULT_NAMES["keyword"], names)
        rules.insert(
            0,
            {
                "name": name,
                "kind": "keyword",
                "tier": shape.target,
                "keywords": list(params.keywords),
            },
        )
    offset = 1 if shape.keyword_index is None and params.keywords else 0
    for kind in THRESHOLD_KINDS:
        gt = params.gt(kind)
        if kind in shape.threshold_index:
            rule = rules[shape.threshold_index[kind] + offset]
            if gt is None:
                rule["enabled"] = False
            else:
                rule["gt"] = gt
                rule.pop("enabled", None)
        elif gt is not None:
            rules.append(
                {
                    "name": _fresh(DEFAULT_NAMES[kind], names),
                    "kind": kind,
                    "gt": gt,
                    "tier": shape.target,
                }
            )
    return spec


def _fresh(name: str, taken: set[str]) -> str:
    candidate, suffix = name, 2
    while candidate in taken:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    taken.add(candidate)
    return candidate
