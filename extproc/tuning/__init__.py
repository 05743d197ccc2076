"""Offline tools of the weekly tuning cycle: sample, evaluate, find keyword candidates, tune.

Everything here replays recorded requests through the same pure `classify()` the server runs;
nothing imports gRPC or telemetry. The `cascade eval|sample|candidates|tune` commands
(`extproc.cli.tuning`) are thin shells around these modules:

| module | what |
|---|---|
| `dataset` | streaming reader of labelled JSONL, decision logs and CSV labelling sheets |
| `lang` | script detection, candidate terms per language, stop words |
| `metrics` | weighted confusion tallies, costs, quality and PGR, baselines |
| `evaluate` | one pass over a data set for several versions; breakdowns; threshold sweep |
| `svg` | the two plots (confusion matrix, strong share vs quality), as self-made SVG |
| `document` | the report document model; terminal, Markdown and HTML renderings |
| `report` | number formats, the evaluation report's blocks, and its JSON |
| `sample` | stratified, seeded samples of traces for labelling |
| `sheet` | labelling sheets (CSV): writing a sample, reading labels back |
| `candidates` | keyword candidates mined from false negatives; keywords that do not pay off |
| `features` | the tunable shape of a version; the records as bit sets for the search |
| `search` | the objective and the greedy threshold and keyword search |
| `tune` | the search within an SLO band per text scope, held-out and cross-validated figures |
| `review` | the tune review: changes and figures on held-out data, its JSON |
| `review_report` | the tune review as a report |

Writing a tuned version into a config file is `extproc.config.editing`.
"""
