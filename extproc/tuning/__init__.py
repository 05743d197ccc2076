"""Offline tools of the weekly tuning cycle: sample, evaluate, find keyword candidates, tune.

Everything here replays recorded requests through the same pure `classify()` the server runs;
nothing imports gRPC or telemetry. The `cascade eval|sample|candidates|tune` commands
(`extproc.cli.tuning`) are thin shells around these modules:

| module | what |
|---|---|
| `dataset` | streaming reader of labelled JSONL, decision logs and CSV labelling sheets |
| `lang` | script detection, candidate terms per language, stop words |
| `quality` | per-tier quality from `evidence`: booleans or graded scores, configurable fields |
| `costs` | the cost of a request on each tier from prices and token counts |
| `metrics` | weighted confusion tallies, quality and PGR, per-tier misroutes, baselines, oracle |
| `curve` | cost-quality curves as RouteLLM defines them: PGR at a share, CPT(x), APGR, oracle |
| `evaluate` | one pass over a data set for several versions; breakdowns; threshold sweep |
| `evalcurves` | the evaluation's curves (versions, families, baselines) and SLO check |
| `svg` | the two plots (confusion matrix, strong share vs quality), as self-made SVG |
| `document` | the report document model; terminal, Markdown and HTML renderings |
| `formats` | number formats of the reports |
| `report` | the evaluation report's blocks, and its JSON |
| `report_curve` | its quality sections: the curve table and plot, the always-weak mark, SLO |
| `sample` | stratified, seeded samples of traces for labelling |
| `sheet` | labelling sheets (CSV): writing a sample, reading labels back |
| `candidates` | keyword candidates mined from false negatives; keywords that do not pay off |
| `directions` | candidates both ways (up: from false negatives; weak-safe: from false positives) |
| `folds` | validation splits grouped by a key; held-out fold figures, pooled out-of-fold figures |
| `features` | the tunable shape of a version; the records as bit sets for the search |
| `search` | the objective and the greedy threshold and keyword search |
| `tune` | the search within an SLO band per text scope, held-out and cross-validated figures |
| `review` | the tune review: changes and figures on held-out data, its JSON |
| `review_report` | the tune review as a report |

Writing a tuned version into a config file is `extproc.config.editing`.
"""
