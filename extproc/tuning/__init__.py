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
| `report` | terminal table, JSON, Markdown and HTML renderings |
| `sample` | stratified, seeded labelling sheets (CSV) and reading them back |
| `candidates` | keyword candidates mined from false negatives; keywords that do not pay off |
| `tune` | threshold and keyword search within an SLO band, held-out figures |
| `review` | the tune review report; writing a new version into a config file |
"""
