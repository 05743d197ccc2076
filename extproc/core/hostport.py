"""`host:port` text, parsed and written in one place (IPv6 literals in brackets: `[::1]:8080`)."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple


class HostPort(NamedTuple):
    #: A host name or an IP literal, without brackets (what Envoy's `socket_address` takes).
    host: str
    port: int

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)


def parse_host_port(text: str, *, allow_zero: bool = False) -> HostPort:
    """`host:port`, `1.2.3.4:port` or `[v6]:port` → `HostPort`; ValueError otherwise.

    A bare IPv6 literal without brackets (`::1:80`) is refused: where the port starts is ambiguous.
    `allow_zero` admits port 0 ("any free port") for listeners.
    """
    host, sep, port_text = text.rpartition(":")
    low = 0 if allow_zero else 1
    if not sep or not host or not port_text.isdigit() or not low <= int(port_text) <= 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    if host.startswith("["):
        if not host.endswith("]") or not is_ip(host[1:-1]) or ":" not in host:
            raise ValueError(f"expected [IPv6]:port, got {text!r}")
        host = host[1:-1]
    elif ":" in host or "]" in host:
        raise ValueError(f"IPv6 addresses need brackets ([::1]:8080), got {text!r}")
    return HostPort(host, int(port_text))


def parse_listen(text: str) -> HostPort:
    """A listen address: `parse_host_port` with port 0 allowed and `:port` meaning all IPv4."""
    if text.startswith(":"):
        text = "0.0.0.0" + text
    return parse_host_port(text, allow_zero=True)


def join_host_port(host: str, port: int) -> str:
    """The inverse of `parse_host_port`: brackets around IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(host: str) -> bool:
    """True for an IPv4 or IPv6 literal (no brackets), False for a host name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
