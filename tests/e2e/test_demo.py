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
