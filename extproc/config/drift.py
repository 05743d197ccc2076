"""No drift between the cascade config and the Envoy config rendered from it.

Envoy routes on the tier the server decides (`x-cascade-tier`), with one route and one cluster
per tier of the config it was rendered from. A live reload that adds or renames a tier, or
changes a tier's model, would make the server decide tiers Envoy cannot route (its default route,
the wrong model: a 404 from the backend). So the rendered classifier filter sends a fingerprint
of the tiers it routes as gRPC metadata on every stream (`x-cascade-routes`), and the server
picks, per stream, a snapshot whose fingerprint matches:

- the current snapshot when it matches (or when Envoy sends none: a hand-written Envoy config);
- else the last snapshot that matched it (a reload Envoy has not caught up with): decisions
  stay routable; the mismatch is counted (`outcome="kept"`), logged once per pair and reported
  (`in_sync` false: the `cascade_routes_in_sync` gauge and the `cascade.routes` health service);
- else (no snapshot Envoy can route is known, e.g. the server started with a newer config than
  Envoy's) the current one, counted as `outcome="unknown"` and reported the same way.

Re-render and reload Envoy (`cascade render envoy`) to clear it. Plain bookkeeping, no I/O; the
transport calls `snapshot_for` once per stream (one comparison, one dict lookup).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from extproc.config.snapshot import Snapshot

logger = logging.getLogger(__name__)

#: How many earlier fingerprints (and their last snapshots) are kept.
KEPT_FINGERPRINTS = 4

OUTCOMES = ("kept", "unknown")


def routes_fingerprint(snapshot: Snapshot) -> str:
    """What Envoy routes, in short: a hash of every tier's name and model, then the names.

    E.g. `3f2a9c1b0d4e:weak,strong`. Tier names are ASCII letters, digits, `-` and `_`, so the
    value is valid gRPC metadata as it is.
    """
    parts = [f"{tier.name}={tier.model}" for tier in snapshot.tiers]
    digest = hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:12]
    return f"{digest}:{','.join(snapshot.tier_names)}"


class RoutesGuard:
    """Per stream: the snapshot to decide with, given the fingerprint Envoy sent."""

    def __init__(
        self,
        current: Callable[[], Snapshot],
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._current = current
        self._on_change = on_change
        first = current()
        self._last: tuple[Snapshot, str] = (first, routes_fingerprint(first))
        #: fingerprint -> the last snapshot that had it (insertion order = age)
        self._routable: dict[str, Snapshot] = {self._last[1]: first}
        #: mismatched streams by outcome (`kept`, `unknown`)
        self.mismatches: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        #: False while the last fingerprint Envoy sent differs from the current config's
        self.in_sync = True
        #: the last fingerprint Envoy sent ("" before the first stream)
        self.envoy = ""
        self._logged: set[tuple[str, str]] = set()

    @property
    def last_config(self) -> str:
        """The fingerprint of the config last seen (read-only: safe from another thread)."""
        return self._last[1]

    def _fingerprinted(self) -> tuple[Snapshot, str]:
        snapshot = self._current()
        if snapshot is not self._last[0]:
            fingerprint = routes_fingerprint(snapshot)
            self._last = (snapshot, fingerprint)
            self._routable.pop(fingerprint, None)
            self._routable[fingerprint] = snapshot
            while len(self._routable) > KEPT_FINGERPRINTS:
                del self._routable[next(iter(self._routable))]
            if self.envoy:  # a reload may bring the config back in line (or out of it)
                self._set_in_sync(fingerprint == self.envoy)
        return self._last

    def reloaded(self, ok: bool, message: str) -> None:
        """A `ConfigStore` listener: re-judge `in_sync` at once, not at the next stream."""
        if ok:
            self._fingerprinted()

    def snapshot_for(self, envoy: str) -> Snapshot:
        snapshot, fingerprint = self._fingerprinted()
        if not envoy:
            return snapshot
        self.envoy = envoy
        if envoy == fingerprint:
            if not self.in_sync:
                self._set_in_sync(True)
            return snapshot
        kept = self._routable.get(envoy)
        outcome = "kept" if kept is not None else "unknown"
        self.mismatches[outcome] += 1
        if self.in_sync:
            self._set_in_sync(False)
        if (envoy, fingerprint) not in self._logged and len(self._logged) < 64:
            self._logged.add((envoy, fingerprint))
            logger.error(
                "the config's tiers (%s) do not match the tiers Envoy routes (%s): %s; "
                "re-render the Envoy config (cascade render envoy) and reload Envoy",
                fingerprint,
                envoy,
                f"deciding with the last config Envoy can route (digest {kept.digest})"
                if kept is not None
                else "no config Envoy can route is known, deciding with the current one",
            )
        return kept if kept is not None else snapshot

    def _set_in_sync(self, value: bool) -> None:
        if value == self.in_sync:
            return
        self.in_sync = value
        if value:
            logger.info("the config's tiers match the tiers Envoy routes again")
        if self._on_change is not None:
            self._on_change(value)
