"""The response cache through the real Envoy: what it costs when nothing hits, what a hit takes.

Stacks, same machine, same run, interleaved rounds (`bench_gateway.py`'s Envoy, with routes that
answer a fixed `chat.completion` by `direct_response`, so no upstream adds noise):

- floor: Envoy alone;
- cascade: `cascade serve`, no cache;
- cascade-cache: the same with `cache:` on (exact keys), every request different (a counter in
  the body): 0 % hits, every answer stored;
- cascade-cache-semantic: the same with the semantic tier on;
- hit / hit-sse (latency only, 1 connection): one question asked again and again, answered from
  the cache as JSON or as an SSE replay.

    .venv/bin/python bench/bench_cache_gateway.py [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gateway import (
    BIN,
    envoy_config,
    free_port,
    measured,
    start_stack,
)

from extproc.config.snapshot import DEFAULT_CONFIG, load_snapshot

ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "An answer of a few words. " * 8},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 60, "total_tokens": 180},
    }
).encode()
CACHES = {
    "cascade": "",
    "cascade-cache": "cache: {max_entries: 200000}\n",
    "cascade-cache-semantic": "cache: {max_entries: 200000, semantic: {enabled: true}}\n",
}
QUESTION = (
    "Explain what this function returns for empty input and why the loop never runs, "
    "then suggest a test case that covers it. Request number __N__ of the benchmark run."
)


def scripts(tmp: Path) -> dict[str, Path]:
    """wrk scripts: every request different (`unique`), one question again (`same`, `same-sse`)."""
    found = {}
    for name, stream in (("unique", False), ("same", False), ("same-sse", True)):
        body: dict[str, object] = {
            "model": "auto",
            "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0,
        }
        if stream:
            body["stream"] = True
        template = tmp / f"{name}.json"
        template.write_text(json.dumps(body))
        counter = (
            'body = template:gsub("__N__", tostring(n))' if name == "unique" else "body = template"
        )
        script = tmp / f"{name}.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["content-type"] = "application/json"\n'
            'wrk.headers["x-user-id"] = "bench"\n'
            f'local f = io.open("{template}", "rb")\nlocal template = f:read("*a")\nf:close()\n'
            "local n = 0\n"
            "request = function()\n"
            f"  n = n + 1\n  local {counter}\n"
            "  return wrk.format(nil, nil, nil, body)\nend\n"
        )
        found[name] = script
    return found


def stack(
    name: str, tmp: Path, cache: str | None, runs: list[tuple[str, Path, int]], seconds: int
) -> dict[str, dict[str, float]]:
    """One stack; `runs`: (label, wrk script, connections). cache None = Envoy alone."""
    listen, admin = free_port(), free_port()
    extproc_port = free_port() if cache is not None else None
    config = tmp / f"{name}.cascade.yaml"
    config.write_text(DEFAULT_CONFIG.read_text() + "\n" + (cache or ""))
    snapshot = load_snapshot(config)
    envoy = envoy_config(listen, admin, extproc_port, snapshot, ANSWER)
    args = None
    if extproc_port is not None:
        args = [str(BIN / "cascade"), "serve", "--config", str(config)]
        args += ["--listen", f"127.0.0.1:{extproc_port}", "--log-level", "warning"]
        args += ["--metrics-listen", "off"]
    results: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        server = start_stack(stack, tmp / name, envoy, listen, args, extproc_port)
        for label, script, connections in runs:
            if label.startswith("hit"):
                prime(listen, script)
            results[label] = measured(listen, server, connections, seconds, script)
    return results


def prime(port: int, script: Path) -> None:
    """Ask the hit benchmark's question once (plain) so the cache holds its answer."""
    body = json.loads(script.with_suffix(".json").read_text())
    body.pop("stream", None)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-user-id": "bench"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()
    time.sleep(0.2)  # the store runs after the answer was sent
    with urllib.request.urlopen(request, timeout=5) as response:
        if response.headers.get("x-cascade-cache") != "hit":
            raise SystemExit("the cache did not answer the primed question: check the config")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    found: dict[str, list[dict[str, dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        script = scripts(tmp)
        load = [("16 conns", script["unique"], 16), ("1 conn", script["unique"], 1)]
        hits = [("hit", script["same"], 1), ("hit-sse", script["same-sse"], 1)]
        for _ in range(args.rounds):
            found.setdefault("floor", []).append(stack("floor", tmp, None, load, args.seconds))
            for name, cache in CACHES.items():
                runs = load + (hits if name == "cascade-cache" else [])
                found.setdefault(name, []).append(stack(name, tmp, cache, runs, args.seconds))
    medians = {
        name: {
            label: {k: statistics.median(r[label][k] for r in rounds) for k in rounds[0][label]}
            for label in rounds[0]
        }
        for name, rounds in found.items()
    }
    print(json.dumps(medians, indent=1))
    print(f"\n{'stack':<24} {'run':<9} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'srv µs/req':>10}")
    for name, by_label in medians.items():
        for label, f in by_label.items():
            print(
                f"{name:<24} {label:<9} {f['rps']:>8.0f} {f['p50_ms']:>7.2f} {f['p99_ms']:>7.2f} "
                f"{f.get('server_cpu_us', 0):>10.0f}"
            )
    base = medians["cascade"]["16 conns"]["rps"]
    for name in ("cascade-cache", "cascade-cache-semantic"):
        ratio = medians[name]["16 conns"]["rps"] / base
        print(f"{name} / cascade req/s at 16 connections, 0 % hits: {ratio:.1%}")


if __name__ == "__main__":
    main()
