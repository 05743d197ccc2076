"""Shared factories for all test layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from extproc.config.snapshot import DEFAULT_CONFIG, Snapshot, compile_config, load_snapshot

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def default_snapshot() -> Snapshot:
    return load_snapshot(DEFAULT_CONFIG)


@pytest.fixture
def make_snapshot() -> Callable[[str], Snapshot]:
    def build(text: str) -> Snapshot:
        return compile_config(text, "test.yaml")

    return build


def chat_body(*contents: str, role: str = "user", **extra: object) -> bytes:
    """A chat-completions body with one message per content."""
    return orjson.dumps(
        {"model": "auto", "messages": [{"role": role, "content": c} for c in contents], **extra}
    )


#: The `cascade.v1` caller token the test servers accept (`--api-tokens`).
API_TOKEN = "test-token-0123456789abcdef"
API_AUTH = (("authorization", f"Bearer {API_TOKEN}"),)


def write_api_tokens(directory: Path) -> Path:
    path = directory / "api-tokens"
    path.write_text(f"# caller token\ntests {API_TOKEN}\n")
    return path
