"""Gateway throughput with the learned scorer on, beside v7, through the real Envoy.

Stacks, same machine, same run, interleaved rounds (`bench_gateway.py`'s Envoy: routes answer by
`direct_response`, so no upstream adds noise; its 4 KB mixed-script chat body):

- floor: Envoy alone (buffer filter + direct_response);
- cascade: `cascade serve` with the packaged config (v7);
- cascade-scorer: the same config whose stable version is v7 with a trained scorer step after
  its keyword rule (the artifact `cascade train` writes from the synthetic records of
  `bench_scorer.py`), so every request is parsed, hashed and scored.

Load: wrk at 1 and 16 connections. Reported: req/s, p50, p99 and the ext_proc server's CPU per
request (from /proc), and cascade-scorer / cascade req/s at 16 connections (issue 13: within
10 %).

    .venv/bin/python bench/bench_scorer_gateway.py [--seconds 10] [--rounds 3] [--bits 18]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import (
    BIN,
    body_4k,
    envoy_config,
    free_port,
    measure_stack,
    median_run,
    post_script,
    print_table,
)
from bench_scorer import trained_artifact

from extproc.config.snapshot import DEFAULT_CONFIG

STACKS = ("floor", "cascade", "cascade-scorer")


def scorer_config(tmp: Path, bits: int) -> Path:
    """The packaged config with a stable version v7s = v7 + a trained scorer after its keywords."""
    model = trained_artifact(tmp, "--bits", str(bits))
    document = yaml.safe_load(DEFAULT_CONFIG.read_text())
    v7 = document["classifiers"]["v7"]
    rule = {
        "name": "learned",
        "kind": "scorer",
        "model": model.name,  # beside the config
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
    }
    document["classifiers"]["v7s"] = dict(v7, rules=[v7["rules"][0], rule, *v7["rules"][1:]])
    document["classifier"] = "v7s"
    document.pop("canary", None)
    config = tmp / "scorer.cascade.yaml"
    config.write_text(yaml.safe_dump(document, allow_unicode=True))
    return config


def run_stack(
    name: str, tmp: Path, seconds: int, script: Path, config: Path
) -> dict[int, dict[str, float]]:
    listen, admin = free_port(), free_port()
    extproc_port = None if name == "floor" else free_port()
    args = None
    if extproc_port is not None:
        args = [str(BIN / "cascade"), "serve", "--listen", f"127.0.0.1:{extproc_port}"]
        args += ["--log-level", "warning", "--metrics-listen", "off"]
        if name == "cascade-scorer":
            args += ["--config", str(config)]
    envoy = envoy_config(listen, admin, extproc_port)
    return measure_stack(tmp / name, envoy, listen, args, extproc_port, seconds, script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=18, help="the scorer's hash buckets, 2^bits")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        config = scorer_config(tmp, args.bits)
        script = post_script(tmp, body_4k())
        runs: dict[str, list[dict[int, dict[str, float]]]] = {name: [] for name in STACKS}
        loads = []
        for _ in range(args.rounds):  # interleaved: drift on a shared machine hits every stack
            for name, found in runs.items():
                loads.append(os.getloadavg()[0])
                found.append(run_stack(name, tmp, args.seconds, script, config))
        results = {name: median_run(found) for name, found in runs.items()}
    print(json.dumps(results, indent=1))
    print(f"\nload average during the runs: {min(loads):.1f} to {max(loads):.1f}")
    print_table(results)
    ratio = results["cascade-scorer"][16]["rps"] / results["cascade"][16]["rps"]
    print(f"\ncascade-scorer / cascade req/s at 16 connections: {ratio:.1%}")
    spread = [r[16]["rps"] for r in runs["cascade-scorer"]], [r[16]["rps"] for r in runs["cascade"]]
    print(f"rounds at 16 connections: scorer {spread[0]}, v7 {spread[1]}")


if __name__ == "__main__":
    main()
