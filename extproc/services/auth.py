"""Who may call `cascade.v1`: bearer tokens by caller name, and per-caller rate limits.

The ext_proc service on the same port is Envoy's; its callers are limited by the network (the
NetworkPolicy, optionally mTLS: docs/security.md). The `cascade.v1` API is for the team's own
tools, so it needs a token: `cascade serve --api-tokens FILE`, one `caller-name token` pair per
line (`#` comments). Without the file every `cascade.v1` call is refused (UNAUTHENTICATED):
the API fails closed. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

#: gRPC metadata carrying `Bearer <token>`.
AUTHORIZATION = "authorization"
MIN_TOKEN_CHARS = 16


class TokenFileError(ValueError):
    pass


def parse_tokens(text: str, source: str = "<tokens>") -> dict[str, str]:
    """`caller token` lines → {token: caller}; every error names its line, tokens never."""
    tokens: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise TokenFileError(f"{source}:{number}: expected 'caller-name token'")
        caller, token = parts
        if len(token) < MIN_TOKEN_CHARS:
            raise TokenFileError(f"{source}:{number}: token under {MIN_TOKEN_CHARS} characters")
        if token in tokens:
            raise TokenFileError(f"{source}:{number}: token repeated")
        tokens[token] = caller
    return tokens


@dataclass(slots=True)
class Bucket:
    tokens: float
    stamp: float


@dataclass(slots=True)
class RateLimiter:
    """A token bucket per caller: `rate` per second, bursts of `burst`; `max_callers` buckets."""

    rate: float
    burst: float
    max_callers: int = 1024
    _buckets: OrderedDict[str, Bucket] = field(default_factory=OrderedDict)

    def allow(self, caller: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(caller)
        if bucket is None:
            bucket = self._buckets[caller] = Bucket(self.burst, now)
            if len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(caller)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True


@dataclass(frozen=True, slots=True)
class Authenticator:
    tokens: Mapping[str, str]

    def caller(self, metadata: Mapping[str, str]) -> str | None:
        """The caller's name for a valid `authorization: Bearer <token>`, else None."""
        value = metadata.get(AUTHORIZATION, "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        presented = token.strip().encode()
        found = None
        for known, caller in self.tokens.items():  # constant time per known token
            if hmac.compare_digest(presented, known.encode()):
                found = caller
        return found
