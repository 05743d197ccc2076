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
  Envoy's) the current one restricted to the tiers Envoy names (`restrict`: rules deciding
  another tier are dropped, a default Envoy lacks becomes `default_tier` or Envoy's cheapest
  known tier), counted as `outcome="restricted"`; with no tier in common, the current one
  unchanged (`outcome="unknown"`).

Re-render and reload Envoy (`cascade render envoy`) to clear it. Plain bookkeeping, no I/O; the
transport calls `snapshot_for` once per stream (one comparison, one dict lookup).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable

from extproc.config.snapshot import Snapshot
from extproc.core.rules import Rule

logger = logging.getLogger(__name__)

#: How many earlier fingerprints (and their last snapshots) are kept.
KEPT_FINGERPRINTS = 4

#: Longest fingerprint read from the metadata (more is cut: it is logged and a label).
MAX_FINGERPRINT = 512

OUTCOMES = ("kept", "restricted", "unknown")


def routes_fingerprint(snapshot: Snapshot) -> str:
    """What Envoy routes, in short: a hash of every tier's name and model, then the names.

    E.g. `3f2a9c1b0d4e:weak,strong`. Tier names are ASCII letters, digits, `-` and `_`, so the
    value is valid gRPC metadata as it is.
    """
    parts = [f"{tier.name}={tier.model}" for tier in snapshot.tiers]
    digest = hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:12]
    return f"{digest}:{','.join(snapshot.tier_names)}"


def envoy_tiers(fingerprint: str) -> tuple[str, ...]:
    """The tier names a fingerprint lists (after its `:`)."""
    _digest, _, names = fingerprint.partition(":")
    return tuple(name for name in names.split(",") if name)


def restrict(snapshot: Snapshot, names: tuple[str, ...]) -> Snapshot | None:
    """`snapshot` deciding only tiers in `names`; None when they have no tier in common."""
    known = set(names)
    routable = [name for name in snapshot.tier_names if name in known]
    if not routable:
        return None
    default = snapshot.default_tier if snapshot.default_tier in known else routable[0]

    def fits(rule: Rule) -> bool:
        if rule.scorer is not None:
            return all(tier in known for tier in rule.scorer.scorer.tiers)
        return rule.tier in known

    classifiers = {
        version: dataclasses.replace(
            classifier,
            default=classifier.default if classifier.default in known else default,
            rules=tuple(rule for rule in classifier.rules if fits(rule)),
        )
        for version, classifier in snapshot.classifiers.items()
    }
    return dataclasses.replace(snapshot, default_tier=default, classifiers=classifiers)


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
        #: (current snapshot, Envoy's fingerprint) -> the current one restricted to its tiers
        self._restricted: tuple[Snapshot, str, Snapshot | None] | None = None

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
        current = self._current()
        last, fingerprint = self._last
        if current is last and (not envoy or (envoy == fingerprint == self.envoy)):
            return current  # the common case: nothing reloaded, Envoy in sync (or silent)
        return self._choose(envoy)

    def _choose(self, envoy: str) -> Snapshot:
        snapshot, fingerprint = self._fingerprinted()
        if not envoy:
            return snapshot
        envoy = envoy[:MAX_FINGERPRINT]  # peer input: logged and a metric label
        self.envoy = envoy
        if envoy == fingerprint:
            if not self.in_sync:
                self._set_in_sync(True)
            return snapshot
        chosen = self._routable.get(envoy)
        outcome = "kept"
        if chosen is None:
            chosen = self._restrict(snapshot, envoy)
            outcome = "restricted" if chosen is not None else "unknown"
        self.mismatches[outcome] += 1
        if self.in_sync:
            self._set_in_sync(False)
        if (envoy, fingerprint) not in self._logged and len(self._logged) < 64:
            self._logged.add((envoy, fingerprint))
            how = {
                "kept": "deciding with the last config Envoy can route",
                "restricted": "deciding with the current config restricted to Envoy's tiers",
                "unknown": "no tier in common: deciding with the current config",
            }[outcome]
            logger.error(
                "the config's tiers (%s) do not match the tiers Envoy routes (%s): %s "
                "(digest %s); re-render the Envoy config (cascade render envoy) and reload Envoy",
                fingerprint,
                envoy,
                how,
                (chosen or snapshot).digest,
            )
        return chosen if chosen is not None else snapshot

    def _restrict(self, snapshot: Snapshot, envoy: str) -> Snapshot | None:
        cached = self._restricted
        if cached is None or cached[0] is not snapshot or cached[1] != envoy:
            cached = (snapshot, envoy, restrict(snapshot, envoy_tiers(envoy)))
            self._restricted = cached
        return cached[2]

    def _set_in_sync(self, value: bool) -> None:
        if value == self.in_sync:
            return
        self.in_sync = value
        if value:
            logger.info("the config's tiers match the tiers Envoy routes again")
        if self._on_change is not None:
            self._on_change(value)
