"""The default model rewrite through the real Envoy: two stacks (`rewrite_model` off and on),
same machine, requests alternating between them, each a 4 KB strong request (strong has a
`fallback`, so with the rewrite its per-attempt filter also receives the body).

    .venv/bin/python bench/bench_rewrite_gateway.py [--requests 400]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.e2e
from tests.e2e.harness import Gateway

WARMUP = 20


def _rewrite(flag: bool) -> Any:
    def edit(document: dict[str, Any], _gateway: Gateway) -> None:
        document["server"]["rewrite_model"] = flag

    return edit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    text = "please refactor this module " + "y" * 4000
    body = json.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]}).encode()
    headers = {"content-type": "application/json"}
    root = Path(tempfile.mkdtemp(prefix="bench-rewrite-"))
    stacks: dict[bool, Gateway] = {}
    try:
        for flag in (False, True):
            workdir = root / ("on" if flag else "off")
            workdir.mkdir()
            stacks[flag] = Gateway(workdir, edit_config=_rewrite(flag), stream_delay_ms=0)
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for index in range(WARMUP + args.requests):
            for flag, gateway in stacks.items():
                started = time.perf_counter()
                reply = gateway.request("POST", "/v1/chat/completions", body, headers)
                elapsed = time.perf_counter() - started
                assert reply.status == 200 and reply.headers["x-cascade-served-tier"] == "strong"
                if index >= WARMUP:
                    seconds[flag].append(elapsed)
        print("| rewrite_model | requests | p50 | p90 |")
        print("|---|---:|---:|---:|")
        for flag, values in seconds.items():
            values.sort()
            p50 = statistics.median(values) * 1e3
            p90 = values[int(len(values) * 0.9)] * 1e3
            print(f"| {'on' if flag else 'off'} | {len(values)} | {p50:.2f} ms | {p90:.2f} ms |")
    finally:
        for gateway in stacks.values():
            gateway.close()


if __name__ == "__main__":
    main()
