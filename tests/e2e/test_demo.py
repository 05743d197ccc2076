"""`cascade demo --once`: the whole stack comes up, routes the sample requests and exits 0."""

from __future__ import annotations

import subprocess

from tests.e2e.harness import CASCADE


def test_demo_once_prints_routing_table() -> None:
    result = subprocess.run(
        [str(CASCADE), "demo", "--once", "--port", "0"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "strong" in rows["Korean, keyword"]
    assert "리팩터" in rows["Korean, keyword"]
    assert " weak " in rows["spoofed tier header"]
    assert "(none: 400 from cascade)" in rows["invalid JSON"]
    assert "strong" in rows["streaming (SSE)"]
    assert "weak" in rows["cache: first ask"]
    assert "(none: cache hit)" in rows["cache: asked again"]
    assert "escalated weak->strong" in rows["weak refuses: gate"]
    assert " strong " in rows["weak refuses: gate"]
    # the summary read from the server's /metrics endpoint
    assert "tier mix (decisions): strong 55% (6), weak 45% (5)" in out
    cost = next(line for line in out.splitlines() if "cost per 1k requests: $" in line)
    assert float(cost.split("$")[1].split()[0]) > 0
    assert "TTFT strong: mean" in out and "TTFT weak: mean" in out
