"""`cascade canary --once` against a Prometheus that does not answer: figures, then exit 3."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.unit.test_canary import CONFIG

CASCADE = Path(sys.executable).with_name("cascade")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when this returns: refused


def test_once_with_prometheus_unreachable_exits_3(tmp_path: Path) -> None:
    config = tmp_path / "cascade.yaml"
    config.write_text(CONFIG)
    result = subprocess.run(
        [
            str(CASCADE),
            "canary",
            "--config",
            str(config),
            "--once",
            "--prometheus",
            f"http://127.0.0.1:{closed_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "prometheus error" in result.stdout
    assert "did not answer" in result.stderr
