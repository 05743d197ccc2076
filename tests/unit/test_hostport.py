"""One parser for `host:port`: IPv4, names and bracketed IPv6, with clear refusals."""

from __future__ import annotations

import pytest

from extproc.core.hostport import HostPort, is_ip, join_host_port, parse_host_port, parse_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", HostPort("127.0.0.1", 8080)),
        ("weak.models.svc:8000", HostPort("weak.models.svc", 8000)),
        ("[::1]:18081", HostPort("::1", 18081)),
        ("[fd00::2]:65535", HostPort("fd00::2", 65535)),
    ],
)
def test_parse_and_join_round_trip(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected
    assert str(expected) == text
    assert join_host_port(*expected) == text


@pytest.mark.parametrize(
    "text",
    ["8080", ":8080", "host:", "host:0", "host:65536", "host:80a", "::1:80", "[::1:80", "[x]:80"],
)
def test_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"host|IPv6"):
        parse_host_port(text)


def test_listen_allows_port_zero_and_a_bare_port() -> None:
    assert parse_listen(":9464") == HostPort("0.0.0.0", 9464)
    assert parse_listen("[::]:0") == HostPort("::", 0)
    with pytest.raises(ValueError):
        parse_host_port("127.0.0.1:0")


def test_is_ip() -> None:
    assert is_ip("10.0.0.1")
    assert is_ip("::1")
    assert not is_ip("[::1]")
    assert not is_ip("weak.svc")
