"""The benchmark scripts still import and parse their options (they are not run here)."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_bench_script_imports_and_shows_help(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def test_passthrough_module_loads() -> None:
    namespace = runpy.run_path(str(BENCH / "passthrough_extproc.py"), run_name="not_main")
    assert callable(namespace["main"]) and callable(namespace["serve_h2"])
