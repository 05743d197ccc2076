"""A second `cascade serve` on a port in use fails with a clear message instead of silently
splitting Envoy's traffic; `--reuse-port` shares the port on purpose. Both transports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.app.run import TRANSPORTS
from tests.e2e.harness import wait_for

CASCADE = Path(sys.executable).with_name("cascade")


def serve(
    tmp_path: Path, name: str, listen: str, transport: str, *extra: str
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CASCADE_PORT_FILE": str(tmp_path / f"{name}.port")}
    return subprocess.Popen(
        [str(CASCADE), "serve", "--listen", listen, "--metrics-listen", "off",
         "--transport", transport, "--drain-delay", "0", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip


@pytest.fixture(params=TRANSPORTS)
def first(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int, bool]]:
    transport: str = request.param
    reuse = request.node.get_closest_marker("reuse_port") is not None
    process = serve(
        tmp_path, "first", "127.0.0.1:0", transport, *(["--reuse-port"] if reuse else [])
    )
    port_file = tmp_path / "first.port"
    try:
        wait_for(port_file.exists, 20, "the first server to listen")
        yield transport, int(port_file.read_text()), reuse
    finally:
        process.kill()
        process.communicate(timeout=10)  # reaps it and closes its pipe


def test_a_busy_port_is_refused(first: tuple[str, int, bool], tmp_path: Path) -> None:
    transport, port, _ = first
    second = serve(tmp_path, "second", f"127.0.0.1:{port}", transport)
    _, stderr = second.communicate(timeout=30)
    assert second.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in stderr.decode()
    assert "--reuse-port" in stderr.decode()


@pytest.mark.reuse_port
def test_reuse_port_shares_it_on_purpose(first: tuple[str, int, bool], tmp_path: Path) -> None:
    transport, port, reuse = first
    assert reuse
    second = serve(tmp_path, "second", f"127.0.0.1:{port}", transport, "--reuse-port")
    try:
        wait_for((tmp_path / "second.port").exists, 20, "the second server to listen")
        assert second.poll() is None
    finally:
        second.kill()
        second.communicate(timeout=10)
