"""The `cache:` section: defaults, and every bad value named with its field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.config.snapshot import compile_config
from extproc.core.errors import ConfigError
from tests.protocol.test_recorder import CONFIG


def cache(section: str) -> str:
    return CONFIG + f"cache: {section}\n"


def test_absent_means_off_and_a_section_means_on() -> None:
    assert not compile_config(CONFIG).cache.enabled
    settings = compile_config(cache("{}")).cache
    assert settings.enabled
    assert settings.scope == "tenant"
    assert settings.identity_headers == ("x-user-id",)
    assert settings.ignore_fields == ("model", "stream", "stream_options")
    assert not settings.semantic.enabled
    assert "cache-control" in settings.headers


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ("{scope: everyone}", "cache.scope"),
        ("{ttl_s: 0}", "cache.ttl_s"),
        ("{audit_share: 2}", "cache.audit_share"),
        ("{semantic: {threshold: 0}}", "cache.semantic.threshold"),
        ("{semantic: {threshold: 1.5}}", "cache.semantic.threshold"),
        ("{backend: redis, redis: {url: 'redis://x'}}", "cache.secret_file"),
        ("{backend: redis}", "cache.redis"),
        ("{redis: {url: 'http://x'}}", "cache.redis.url"),
        ("{secret_file: /nonexistent/secret}", "cache.secret_file"),
        ("{surprise: 1}", "cache.surprise"),
    ],
)
def test_bad_values_are_refused_with_their_path(section: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_config(cache(section))
    assert path in str(info.value)


def test_a_short_secret_is_refused_and_a_good_one_is_read(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("tiny")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        compile_config(cache(f"{{secret_file: '{short}'}}"))
    good = tmp_path / "good"
    good.write_text("s" * 32 + "\n")
    settings = compile_config(cache(f"{{secret_file: '{good}'}}")).cache
    assert settings.secret == b"s" * 32
    assert "s" * 32 not in repr(settings)  # never printed
